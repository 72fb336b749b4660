"""Model zoo registry: `get(name, input_shape, num_classes)`."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import keras

from keras_kd.checks import check_count
from keras_kd.models.applications import (
    APPLICATIONS,
    KERAS_HUB_PREFIX,
    application,
    is_application,
    keras_hub_backbone,
)
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
    weights: str | None = None,
) -> keras.Model:
    """Builds a fresh zoo model, `keras.applications` model or KerasHub backbone.

    Every zoo model is a Functional `keras.Model` mapping images to logits
    whose layers named `stem`, `stage1`, `stage2`, `stage3` and `embedding`
    are feature taps (see `keras_kd.taps.tap_model`).

    `width_ratio` scales every stage's width `C` (not the stem's) to
    `max(1, floor(C * width_ratio))` channels; pass a `fractions.Fraction`
    for exact integer arithmetic (`Fraction(4, 5)` gives `C * 4 // 5`),
    floats are floored after a floating-point product.

    `name` may also be a `keras.applications` constructor (`MobileNetV3Small`,
    `EfficientNetV2B0`, ...; see `applications.application`) or
    `kerashub:<preset directory>`; those take `weights` (a local file) and no
    `width_ratio`. For zoo models `weights` is a `*.weights.h5` file of the model.

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
    num_classes = check_count("num_classes", num_classes, minimum=2)
    if not isinstance(name, str):
        raise TypeError(f"Model name must be a string, got {name!r}.")
    scale_channels(1, width_ratio)  # validates the ratio
    if is_application(name) or name.startswith(KERAS_HUB_PREFIX):
        if width_ratio != 1:
            raise ValueError(f"`width_ratio` scales zoo models only, not {name!r}.")
        if name.startswith(KERAS_HUB_PREFIX):
            if weights is not None:
                raise ValueError("A KerasHub preset carries its own weights; drop `weights`.")
            return keras_hub_backbone(name[len(KERAS_HUB_PREFIX):], input_shape, num_classes)
        return application(name, input_shape, num_classes, weights)
    model = _zoo_model(name.lower(), input_shape, num_classes, width_ratio)
    if weights is not None:
        if not str(weights).endswith(".weights.h5"):
            raise ValueError(f"Zoo models load `*.weights.h5` files (model.save_weights), got {weights}.")
        model.load_weights(weights)
    return model


def _zoo_model(key: str, input_shape, num_classes: int, width_ratio) -> keras.Model:
    if RESNET_PATTERN.match(key):
        return resnet_from_name(key, input_shape, num_classes, width_ratio=width_ratio)
    if WRN_PATTERN.match(key):
        return wrn_from_name(key, input_shape, num_classes, width_ratio=width_ratio)
    if key == "cnn":
        return build_cnn(input_shape, num_classes, width_ratio=width_ratio)
    raise ValueError(
        f"Unknown model {key!r}. Available: {', '.join(ZOO_NAMES)} "
        "(any resnet{6n+2}, resnet8x4/resnet32x4 and wrn_{6n+4}_{k} also work), "
        f"a keras.applications model ({', '.join(APPLICATIONS)}, ...) or kerashub:<preset dir>."
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
