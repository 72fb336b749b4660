"""The runnable examples in the public docstrings stay correct."""

import doctest

import pytest

import keras_kd.adapters
import keras_kd.data.cache
import keras_kd.data.pipeline
import keras_kd.distillers.ensemble
import keras_kd.distillers.features
import keras_kd.distillers.logits
import keras_kd.distillers.online
import keras_kd.distillers.sftn
import keras_kd.distillers.supervised
import keras_kd.export
import keras_kd.losses
import keras_kd.losses.attention
import keras_kd.losses.embedding
import keras_kd.losses.hint
import keras_kd.losses.locality
import keras_kd.losses.soft_target
import keras_kd.models.blocks
import keras_kd.models.multibranch
import keras_kd.models.online
import keras_kd.models.summary
import keras_kd.models.zoo
import keras_kd.taps

MODULES = [
    keras_kd.models.multibranch,
    keras_kd.models.blocks,
    keras_kd.losses.embedding,
    keras_kd.distillers.ensemble,
    keras_kd.data.cache,
    keras_kd.adapters,
    keras_kd.data.pipeline,
    keras_kd.distillers.features,
    keras_kd.distillers.logits,
    keras_kd.distillers.online,
    keras_kd.distillers.sftn,
    keras_kd.distillers.supervised,
    keras_kd.export,
    keras_kd.losses,
    keras_kd.losses.attention,
    keras_kd.losses.hint,
    keras_kd.losses.locality,
    keras_kd.losses.soft_target,
    keras_kd.models.online,
    keras_kd.models.summary,
    keras_kd.models.zoo,
    keras_kd.taps,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
