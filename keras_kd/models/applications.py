"""`keras.applications` architectures and KerasHub backbones as keras_kd
models: images in, logits out, every layer a feature tap."""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path

import keras

#: Architectures tested with keras_kd (any other `keras.applications` model works the same way).
APPLICATIONS = ("MobileNetV3Small", "MobileNetV3Large", "MobileNetV2", "EfficientNetV2B0", "ResNet50V2")
#: Prefix of an `arch` naming a local KerasHub preset directory.
KERAS_HUB_PREFIX = "kerashub:"


def is_application(name: str) -> bool:
    """Whether `name` is a model constructor of `keras.applications` (e.g. `MobileNetV3Small`)."""
    return isinstance(name, str) and name[:1].isupper() and callable(getattr(keras.applications, name, None))


def _classifier(inputs, features, num_classes: int, name: str) -> keras.Model:
    """`inputs -> backbone -> Identity("features") -> GlobalAveragePooling2D("embedding")
    -> Dense("logits")`, ONE flat Functional model (every backbone layer is
    tappable by name; `features` and `embedding` exist in every such model)."""
    if len(features.shape) != 4:
        raise ValueError(f"{name}: the backbone must output a feature map (batch, H, W, C), got {features.shape}.")
    features = keras.layers.Identity(name="features")(features)
    embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(embedding)
    return keras.Model(inputs, logits, name=name)


def application(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    weights: str | None = None,
) -> keras.Model:
    """A `keras.applications` backbone with a fresh classifier head.

    The backbone is built without its top and without its own input
    preprocessing (keras_kd feeds standardized images), its last feature map
    (layer `features`), global average pooling (`embedding`) and a `Dense`
    layer (`logits`), as ONE
    flat Functional model, so `keras_kd.taps.tap_model` reaches every backbone
    layer by name (`keras-kd inspect` lists them).

    `weights`: None (random initialisation), a Keras ImageNet "no top" file
    (`*.h5`) loaded into the backbone, or a `*.weights.h5` file of this whole
    model (as `model.save_weights` writes it). Nothing is downloaded.

    Example:

    >>> model = application("MobileNetV3Small", (32, 32, 3), 10)
    >>> model.output_shape, model.get_layer("embedding").output.shape
    ((None, 10), (None, 576))
    """
    if not is_application(name):
        raise ValueError(f"{name!r} is not a keras.applications model (e.g. {', '.join(APPLICATIONS)}).")
    constructor = getattr(keras.applications, name)
    parameters = inspect.signature(constructor).parameters
    full_weights = weights is not None and str(weights).endswith(".weights.h5")
    if weights is not None and not Path(weights).is_file():
        raise FileNotFoundError(f"Weights file {weights} does not exist (keras_kd never downloads weights).")
    inputs = keras.Input(tuple(int(d) for d in input_shape), name="image")
    options = dict(include_top=False, weights=None if full_weights else weights, input_tensor=inputs)
    if "include_preprocessing" in parameters:
        options["include_preprocessing"] = False
    try:
        backbone = constructor(**options)
    except ValueError as error:
        raise ValueError(f"{name} cannot be built for inputs {tuple(input_shape)}: {error}") from error
    model = stable_layer_names(_classifier(inputs, backbone.output, num_classes, name.lower()))
    if full_weights:
        model.load_weights(weights)
    return model


def keras_hub_backbone(preset: str | Path, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The backbone of a local KerasHub preset directory (as `save_to_preset`
    writes it) with a fresh head, as ONE flat Functional model.

    Needs the optional `keras-hub` package (`pip install keras-kd[hub]`); the
    preset is read from disk, never downloaded.
    """
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError("KerasHub models need the `keras-hub` package: pip install 'keras-kd[hub]'.") from error
    preset = Path(preset)
    if not (preset / "config.json").is_file():
        raise FileNotFoundError(f"{preset} is not a KerasHub preset directory (no config.json).")
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    if len(backbone.inputs) != 1:
        raise ValueError(f"KerasHub backbone {preset.name} takes {len(backbone.inputs)} inputs; keras_kd needs images only.")
    expected = tuple(backbone.inputs[0].shape[1:])
    given = tuple(int(d) for d in input_shape)
    if len(expected) != 3 or any(e is not None and e != g for e, g in zip(expected, given, strict=True)):
        raise ValueError(f"KerasHub backbone {preset.name} takes images of shape {expected}, the data has {given}.")
    output = backbone.outputs[0] if len(backbone.outputs) == 1 else None
    if output is None:
        raise ValueError(f"KerasHub backbone {preset.name} has {len(backbone.outputs)} outputs; keras_kd needs one feature map.")
    return stable_layer_names(_classifier(backbone.inputs[0], output, num_classes, f"{preset.name}_classifier"))


def _snake_case(class_name: str) -> str:
    """`GlobalAveragePooling2D` -> `global_average_pooling2d`, the prefix Keras
    gives an unnamed layer."""
    text = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", text).lower()


def stable_layer_names(model: keras.Model) -> keras.Model:
    """`model` with every automatically named layer (`activation_17`: the
    number counts the layers of that class built earlier IN THE PROCESS)
    renamed by its rank inside `model` (`activation_1`, `activation_2`, ...),
    so a tap name means the same layer in every run; weights are kept.

    Example:

    >>> import keras
    >>> _ = keras.layers.Activation("relu")  # shifts the process-wide counter
    >>> x = keras.Input((4,))
    >>> model = stable_layer_names(keras.Model(x, keras.layers.Activation("relu")(x)))
    >>> model.layers[-1].name
    'activation_1'
    """
    config = model.get_config()
    counts: dict[str, int] = {}
    renamed = {}
    for layer in config["layers"]:
        prefix = _snake_case(layer["class_name"])
        if re.fullmatch(rf"{re.escape(prefix)}(_\d+)?", layer["name"]):
            counts[prefix] = counts.get(prefix, 0) + 1
            renamed[layer["name"]] = f"{prefix}_{counts[prefix]}"
    if all(old == new for old, new in renamed.items()):
        return model

    def rename(node):
        if isinstance(node, dict):
            return {key: rename(value) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(rename(value) for value in node)
        return renamed.get(node, node) if isinstance(node, str) else node

    rebuilt = keras.Model.from_config(rename(config))
    rebuilt.set_weights(model.get_weights())
    return rebuilt
