"""Wide ResNets WRN-d-k (Zagoruyko & Komodakis, "Wide Residual Networks", 2016).

Pre-activation basic blocks, `n = (d - 4) / 6` blocks per stage, widths
16 (stem), 16k, 32k, 64k; names `wrn_{d}_{k}` as in the CRD benchmark.
"""

from __future__ import annotations

import re

import keras
from keras import layers

from keras_kd.models.layers import batch_norm, classifier_head, conv, relu, scale_channels

WRN_PATTERN = re.compile(r"^wrn_(\d+)_(\d+)$")


def preact_block(x, filters: int, strides: int, prefix: str, out_name: str):
    pre = batch_norm(name=f"{prefix}_bn1")(x)
    pre = relu(name=f"{prefix}_relu1")(pre)
    y = conv(filters, 3, strides, name=f"{prefix}_conv1")(pre)
    y = batch_norm(name=f"{prefix}_bn2")(y)
    y = relu(name=f"{prefix}_relu2")(y)
    y = conv(filters, 3, 1, name=f"{prefix}_conv2")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, strides, name=f"{prefix}_shortcut_conv")(pre)
    else:
        shortcut = x
    return layers.Add(name=out_name)([y, shortcut])


def build_wrn(
    depth: int, width: int, input_shape, num_classes: int, name: str, width_ratio=1
) -> keras.Model:
    """Builds WRN-`depth`-`width`; taps: stem, stage1..3, embedding, logits.

    `width_ratio` scales the stage widths (not the 16-channel stem) to
    `max(1, floor(C * width_ratio))` channels (see `scale_channels`).
    """
    if (depth - 4) % 6 != 0 or depth < 10 or width < 1:
        raise ValueError(
            f"WRN depth must be 6n+4 with n >= 1 and width >= 1, got d={depth}, k={width}."
        )
    blocks_per_stage = (depth - 4) // 6
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv(16, 3, 1, name="stem")(inputs)
    stage_widths = [scale_channels(c * width, width_ratio) for c in (16, 32, 64)]
    for stage, filters in enumerate(stage_widths, start=1):
        for block in range(blocks_per_stage):
            strides = 2 if (stage > 1 and block == 0) else 1
            last = block == blocks_per_stage - 1
            out_name = f"stage{stage}_block{block}_out"
            if last and stage < 3:
                out_name = f"stage{stage}"
            x = preact_block(x, filters, strides, f"stage{stage}_block{block}", out_name)
    x = batch_norm(name="final_bn")(x)
    x = relu(name="stage3")(x)
    outputs = classifier_head(x, num_classes)
    return keras.Model(inputs, outputs, name=name)


def wrn_from_name(name: str, input_shape, num_classes: int, width_ratio=1) -> keras.Model:
    match = WRN_PATTERN.match(name)
    if match is None:
        raise ValueError(f"Not a WRN name: {name!r}.")
    depth, width = int(match.group(1)), int(match.group(2))
    return build_wrn(depth, width, input_shape, num_classes, name, width_ratio=width_ratio)
