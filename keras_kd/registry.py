"""Registries of losses and training methods.

Registering is the only step that makes a method available everywhere: a
loss decorated with `@register_loss("name")` is found by `keras_kd.losses.get`,
by YAML configs (`method.losses: [{name: ...}]`), by the CLI and by the
results suite (when it declares a `suite_row`); a builder decorated with
`@register_method("name")` becomes `method.name` in configs, with its
keyword-only parameters as the validated options. Modules under
`keras_kd.losses` and `keras_kd.methods` are imported automatically, so a new
method is one file plus its test.

Example:

>>> from keras_kd import registry
>>> "kd" in registry.loss_names() and "ekd" in registry.method_names()
True
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import keras

_LOSSES: dict[str, type] = {}
_METHODS: dict[str, Method] = {}


@dataclasses.dataclass(frozen=True)
class SuiteRow:
    """How the results suite runs a registered loss: one `distill` row with the
    loss at `weight` (plus `args`) next to CE at `student_loss_weight`."""

    label: str
    weight: float
    args: dict = dataclasses.field(default_factory=dict)
    student_loss_weight: float = 1.0


def register_loss(name: str, suite_row: SuiteRow | None = None) -> Callable[[type], type]:
    """Class decorator: registers a `DistillationLoss` under `name` (and as a
    Keras serializable in package `keras_kd`)."""

    def decorator(cls: type) -> type:
        if name in _LOSSES and _LOSSES[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"Loss name {name!r} is already registered by {_LOSSES[name].__name__}.")
        cls = keras.saving.register_keras_serializable(package="keras_kd")(cls)
        cls.registry_name = name
        cls.suite_row = suite_row
        _LOSSES[name] = cls
        return cls

    return decorator


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered training method: `build(context, **options)` returns a
    `keras_kd` trainer (a `BaseDistiller`); `options` are the builder's
    keyword-only parameters (name -> `inspect.Parameter`)."""

    name: str
    build: Callable
    description: str

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        parameters = inspect.signature(self.build).parameters.values()
        return {p.name: p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def register_method(name: str) -> Callable[[Callable], Callable]:
    """Function decorator: registers a method builder under `name`. The
    builder's first parameter is a `BuildContext` (models and data facts of
    the run); its keyword-only parameters, with type hints and defaults, are
    the method's config options."""

    def decorator(build: Callable) -> Callable:
        if name in _METHODS and _METHODS[name].build.__qualname__ != build.__qualname__:
            raise ValueError(f"Method name {name!r} is already registered.")
        description = (inspect.getdoc(build) or "").split("\n\n")[0].replace("\n", " ")
        _METHODS[name] = Method(name, build, description)
        return build

    return decorator


def _import_all(package: str) -> None:
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        importlib.import_module(f"{package}.{info.name}")


def _discover() -> None:
    _import_all("keras_kd.losses")
    _import_all("keras_kd.methods")


def loss_class(name: str) -> type:
    _discover()
    if name not in _LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Available: {', '.join(sorted(_LOSSES))}.")
    return _LOSSES[name]


def loss_names() -> list[str]:
    _discover()
    return sorted(_LOSSES)


def method(name: str) -> Method:
    _discover()
    if name not in _METHODS:
        raise ValueError(f"Unknown method {name!r}. Available: {', '.join(sorted(_METHODS))}.")
    return _METHODS[name]


def method_names() -> list[str]:
    _discover()
    return sorted(_METHODS)
