"""Model zoo registry: `get(name, input_shape, num_classes)`."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import keras

from keras_kd.models.cnn import build_cnn
from keras_kd.models.layers import scale_channels
from keras_kd.models.resnet import RESNET_PATTERN, resnet_from_name
from keras_kd.models.wrn import WRN_PATTERN, wrn_from_name

#: Named intermediate tensors every zoo model exposes (layer names).
FEATURE_TAPS = ("stem", "stage1", "stage2", "stage3", "embedding")

#: Names listed by `available()`; other `resnet{6n+2}` / `wrn_{6n+4}_{k}` work too.
ZOO_NAMES = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "cnn",
)


def available() -> tuple[str, ...]:
    """Names of the zoo architectures."""
    return ZOO_NAMES


def get(
    name: str,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    width_ratio: int | float | Fraction = 1,
) -> keras.Model:
    """Builds a fresh zoo model.

    Every zoo model is a Functional `keras.Model` mapping images to logits
    whose layers named `stem`, `stage1`, `stage2`, `stage3` and `embedding`
    are feature taps (see `keras_kd.taps.tap_model`).

    `width_ratio` scales every stage's width `C` (not the stem's) to
    `max(1, floor(C * width_ratio))` channels; pass a `fractions.Fraction`
    for exact integer arithmetic (`Fraction(4, 5)` gives `C * 4 // 5`),
    floats are floored after a floating-point product.

    Example:

    >>> model = get("resnet8", input_shape=(28, 28, 1), num_classes=10)
    >>> model.output_shape
    (None, 10)
    >>> get("resnet8", (28, 28, 1), 10, width_ratio=Fraction(3, 5)).get_layer("stage3").output.shape
    (None, 7, 7, 38)
    """
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(
            f"Zoo models take images (height, width, channels); got input_shape={input_shape}."
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2, got {num_classes!r}.")
    if not isinstance(name, str):
        raise TypeError(f"Model name must be a string, got {name!r}.")
    scale_channels(1, width_ratio)  # validates the ratio
    key = name.lower()
    if RESNET_PATTERN.match(key):
        return resnet_from_name(key, input_shape, num_classes, width_ratio=width_ratio)
    if WRN_PATTERN.match(key):
        return wrn_from_name(key, input_shape, num_classes, width_ratio=width_ratio)
    if key == "cnn":
        return build_cnn(input_shape, num_classes, width_ratio=width_ratio)
    raise ValueError(
        f"Unknown model {name!r}. Available: {', '.join(ZOO_NAMES)} "
        "(any resnet{6n+2}, resnet8x4/resnet32x4 and wrn_{6n+4}_{k} also work)."
    )


def synchronize_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of a Functional/Sequential model whose BatchNorm layers, nested
    sub-models included, are `synchronized=True` (statistics over the GLOBAL
    batch under tf.distribute), with the same weights.

    Example:

    >>> synced = synchronize_batchnorm(get("resnet8", (28, 28, 1), 10))
    >>> synced.get_layer("stem_bn").synchronized
    True
    """

    def mark(node):
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization" and isinstance(node.get("config"), dict):
                node["config"]["synchronized"] = True
            for value in node.values():
                mark(value)
        elif isinstance(node, list):
            for value in node:
                mark(value)

    config = keras.saving.serialize_keras_object(model)
    mark(config)
    synced = keras.saving.deserialize_keras_object(config)
    synced.set_weights(model.get_weights())
    return synced
