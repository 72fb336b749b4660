"""The runnable examples in the docstrings of every keras_kd module stay correct.

Modules are found by walking the package, so a new method file is covered
without editing this list.
"""

import doctest
import importlib
import pkgutil

import pytest

import keras_kd

MODULE_NAMES = sorted(
    info.name for info in pkgutil.walk_packages(keras_kd.__path__, prefix="keras_kd.") if "._" not in info.name
)


def test_every_module_is_found():
    assert {"keras_kd.losses.soft_target", "keras_kd.distillers.logits", "keras_kd.registry"} <= set(MODULE_NAMES)


@pytest.mark.parametrize("name", MODULE_NAMES, ids=lambda n: n.removeprefix("keras_kd."))
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
