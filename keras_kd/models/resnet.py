"""CIFAR-style ResNets (He et al. 2016) with the CRD benchmark's naming.

`resnet{6n+2}` has three stages of `n` basic blocks with 16/32/64 channels
after a 16-channel stem; the `x4` variants (`resnet8x4`, `resnet32x4`) use
32-channel stems and 64/128/256-channel stages.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from keras_kd.models.layers import batch_norm, classifier_head, conv, relu, scale_channels

RESNET_PATTERN = re.compile(r"^resnet(\d+)(x4)?$")


def basic_block(x, filters: int, strides: int, prefix: str, out_name: str):
    shortcut = x
    y = conv(filters, 3, strides, name=f"{prefix}_conv1")(x)
    y = batch_norm(name=f"{prefix}_bn1")(y)
    y = relu(name=f"{prefix}_relu1")(y)
    y = conv(filters, 3, 1, name=f"{prefix}_conv2")(y)
    y = batch_norm(name=f"{prefix}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, strides, name=f"{prefix}_shortcut_conv")(x)
        shortcut = batch_norm(name=f"{prefix}_shortcut_bn")(shortcut)
    y = layers.Add(name=f"{prefix}_add")([y, shortcut])
    return relu(name=out_name)(y)


def build_resnet(
    depth: int,
    widths: tuple[int, int, int, int],
    input_shape: tuple[int, ...],
    num_classes: int,
    name: str,
) -> keras.Model:
    """Builds a CIFAR ResNet of `depth = 6n + 2` layers.

    `widths` = (stem, stage1, stage2, stage3) channels. The layers named
    `stem`, `stage1`, `stage2`, `stage3`, `embedding` and `logits` are the
    feature taps.
    """
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {depth}."
        )
    blocks_per_stage = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv(widths[0], 3, 1, name="stem_conv")(inputs)
    x = batch_norm(name="stem_bn")(x)
    x = relu(name="stem")(x)
    for stage, filters in enumerate(widths[1:], start=1):
        for block in range(blocks_per_stage):
            strides = 2 if (stage > 1 and block == 0) else 1
            last = block == blocks_per_stage - 1
            out_name = f"stage{stage}" if last else f"stage{stage}_block{block}_out"
            x = basic_block(x, filters, strides, f"stage{stage}_block{block}", out_name)
    outputs = classifier_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name)


def resnet_from_name(name: str, input_shape, num_classes: int, width_ratio=1) -> keras.Model:
    match = RESNET_PATTERN.match(name)
    if match is None:
        raise ValueError(f"Not a CIFAR ResNet name: {name!r}.")
    depth = int(match.group(1))
    widths = (32, 64, 128, 256) if match.group(2) else (16, 16, 32, 64)
    if width_ratio != 1:
        widths = (widths[0], *(scale_channels(c, width_ratio) for c in widths[1:]))
    return build_resnet(depth, widths, input_shape, num_classes, name)
