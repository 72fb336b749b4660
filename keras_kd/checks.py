"""Argument checks shared by losses, distillers, models and data: each returns
the value in its canonical Python type or raises an error naming the argument
(`TypeError` for a value of the wrong kind, `ValueError` for one out of range).

>>> check_count("epochs", 3, minimum=1)
3
>>> check_count("top_k", None, minimum=1, optional=True) is None
True
>>> check_positive("temperature", 4)
4.0
"""

from __future__ import annotations

import numbers

import numpy as np


def _python_scalar(value):
    """A numpy scalar as the Python number it holds (so errors read `got 0`, not `got np.int64(0)`)."""
    return value.item() if isinstance(value, np.generic) else value


def _check_number(name: str, value: float, strict: bool) -> float:
    """`value` as a float if it is a finite number > 0 (`strict`) or >= 0, else a clear error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    value = _python_scalar(value)
    if not (0 < value if strict else 0 <= value) or not value < float("inf"):
        raise ValueError(f"`{name}` must be a finite number {'>' if strict else '>='} 0, got {value!r}.")
    return float(value)


def check_positive(name: str, value: float) -> float:
    """Returns `value` as a float, raising a clear error unless it is a finite
    number > 0 (numpy numbers accepted; `True` is not a number here)."""
    return _check_number(name, value, strict=True)


def check_non_negative(name: str, value: float) -> float:
    """Returns `value` as a float, raising a clear error unless it is a finite
    number >= 0 (numpy numbers accepted; `True` is not a number here)."""
    return _check_number(name, value, strict=False)


def check_flag(name: str, value: bool) -> bool:
    """Returns `value` as a bool, raising a clear error unless it is one.

    `bool("false")` is True, so coercing would silently turn an option on; a
    numpy bool (e.g. read from an array) is accepted.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def check_count(name: str, value: int | None, minimum: int = 0, optional: bool = False) -> int | None:
    """Returns `value` as an int, raising a clear error unless it is an integer
    `>= minimum` (numpy integers accepted; `True` is not a count, nor is `2.0`).
    With `optional=True`, None passes through unchanged.

    >>> check_count("warmup_epochs", 0)
    0
    >>> check_count("k", 0, minimum=1)
    Traceback (most recent call last):
      ...
    ValueError: `k` must be a positive integer, got 0.
    """
    if optional and value is None:
        return None
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if optional:
        wanted += " or None"
    if not _is_integer(value):
        raise TypeError(f"`{name}` must be {wanted}, got {value!r}.")
    value = _python_scalar(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be {wanted}, got {value!r}.")
    return int(value)


def check_index(name: str, value: int, count: int, of: str) -> int:
    """Returns `value` as an int, raising a clear error unless it is an integer
    in `1..count` (1-based: branches, students; numpy integers accepted); `of`
    says what is numbered.

    >>> check_index("index", 3, 2, of="the branches of 'net'")
    Traceback (most recent call last):
      ...
    ValueError: `index` must be in 1..2 (the branches of 'net'), got 3.
    """
    if not _is_integer(value):
        raise TypeError(f"`{name}` must be an integer in 1..{count} ({of}), got {value!r}.")
    value = int(_python_scalar(value))
    if not 1 <= value <= count:
        raise ValueError(f"`{name}` must be in 1..{count} ({of}), got {value}.")
    return value


def _is_integer(value) -> bool:
    """An integer of Python or numpy, but not a bool (`True` is not a count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
