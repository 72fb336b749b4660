"""The runnable examples in the public docstrings stay correct."""

import doctest
import importlib

import pytest

# By name: `keras_kd.models.multibranch` the attribute is the builder function,
# the module is only reachable through the import system.
MODULE_NAMES = [
    "keras_kd.adapters",
    "keras_kd.data.cache",
    "keras_kd.data.pipeline",
    "keras_kd.distillers.ensemble",
    "keras_kd.distillers.features",
    "keras_kd.distillers.logits",
    "keras_kd.distillers.online",
    "keras_kd.distillers.sftn",
    "keras_kd.distillers.supervised",
    "keras_kd.export",
    "keras_kd.losses",
    "keras_kd.losses.attention",
    "keras_kd.losses.embedding",
    "keras_kd.losses.hint",
    "keras_kd.losses.locality",
    "keras_kd.losses.soft_target",
    "keras_kd.models.blocks",
    "keras_kd.models.multibranch",
    "keras_kd.models.online",
    "keras_kd.models.summary",
    "keras_kd.models.zoo",
    "keras_kd.taps",
]


@pytest.mark.parametrize("name", MODULE_NAMES, ids=lambda n: n.rsplit(".", 1)[-1])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
