"""Layer factories shared by the zoo builders (PyTorch-equivalent defaults)."""

from __future__ import annotations

import math
from fractions import Fraction

from keras import layers

# PyTorch's BatchNorm momentum 0.1 is Keras' 0.9; it also keeps moving
# statistics usable after short CPU runs (Keras' 0.99 needs ~500 steps).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv(filters: int, kernel_size: int = 3, strides: int = 1, name: str | None = None):
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def batch_norm(name: str | None = None):
    return layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def relu(name: str | None = None):
    return layers.ReLU(name=name)


def classifier_head(x, num_classes: int):
    """Global average pooling (the `embedding` tap) followed by the logits."""
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    return layers.Dense(num_classes, name="logits")(embedding)


def scale_channels(channels: int, ratio: int | float | Fraction = 1) -> int:
    """`max(1, floor(channels * ratio))`, exact for int and `Fraction` ratios.

    Floats are multiplied in floating point and then floored, so pass a
    `fractions.Fraction` (e.g. `Fraction(4, 5)`) when the exact integer
    `channels * num // den` matters.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, Fraction)):
        raise TypeError(f"`width_ratio` must be an int, float or fractions.Fraction, got {ratio!r}.")
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"`width_ratio` must be a finite number > 0, got {ratio!r}.")
    if isinstance(ratio, float):
        return max(1, math.floor(channels * ratio))
    return max(1, math.floor(Fraction(channels) * ratio))
