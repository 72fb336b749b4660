"""A small plain CNN (no residuals) with the same feature taps as the ResNets."""

from __future__ import annotations

import keras
from keras import layers

from keras_kd.models.layers import batch_norm, classifier_head, conv, relu, scale_channels


def build_cnn(
    input_shape, num_classes: int, name: str = "cnn", width: int = 16, width_ratio=1
) -> keras.Model:
    """conv(w) stem, then conv(2w)+pool, conv(4w)+pool, conv(8w), GAP, Dense.

    `width_ratio` scales the stage widths (not the stem) to
    `max(1, floor(C * width_ratio))` channels (see `scale_channels`).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv(width, 3, 1, name="stem_conv")(inputs)
    x = batch_norm(name="stem_bn")(x)
    x = relu(name="stem")(x)
    for stage, multiplier in enumerate((2, 4, 8), start=1):
        x = conv(scale_channels(width * multiplier, width_ratio), 3, 1, name=f"stage{stage}_conv")(x)
        x = batch_norm(name=f"stage{stage}_bn")(x)
        if stage < 3:
            x = relu(name=f"stage{stage}_relu")(x)
            x = layers.MaxPooling2D(2, name=f"stage{stage}")(x)
        else:
            x = relu(name=f"stage{stage}")(x)
    outputs = classifier_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name)
