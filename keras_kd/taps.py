"""One-pass access to named intermediate tensors of any Functional model."""

from __future__ import annotations

from collections.abc import Sequence

import keras

LOGITS = "logits"


def layer_names(model: keras.Model) -> list[str]:
    """Names of the top-level layers of `model` that can be tapped."""
    return [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def tap_model(model: keras.Model, names: Sequence[str]) -> keras.Model:
    """A view of `model` returning `{"logits": ..., name: tensor, ...}` in ONE pass.

    The view shares every layer (and so every weight) with `model`; calling it
    runs each layer once. `names` are layer names of `model` (for zoo models:
    `stem`, `stage1`, `stage2`, `stage3`, `embedding`). Only Functional and
    Sequential models have addressable intermediate tensors; a subclassed
    model raises a clear error.

    Example:

    >>> from keras_kd import models
    >>> student = models.get("resnet8", (28, 28, 1), 10)
    >>> view = tap_model(student, ["stage3", "embedding"])
    >>> sorted(view.output.keys())
    ['embedding', 'logits', 'stage3']
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("tap_model needs at least one layer name.")
    inputs = getattr(model, "inputs", None)
    if not inputs or not getattr(model, "outputs", None):
        raise ValueError(
            f"Model {model.name!r} is not a Functional/Sequential model with known "
            "inputs, so its intermediate features cannot be tapped by layer name. "
            "Build it with the Functional API (or call a Sequential model once)."
        )
    if len(model.outputs) != 1:
        raise ValueError(
            f"Model {model.name!r} has {len(model.outputs)} outputs; feature taps "
            "need a single-output (logits) model."
        )
    outputs = {LOGITS: model.outputs[0]}
    available = layer_names(model)
    for name in names:
        if name == LOGITS:
            continue
        if name not in available:
            raise ValueError(
                f"Model {model.name!r} has no layer named {name!r}. "
                f"Available layers: {', '.join(available)}."
            )
        output = model.get_layer(name).output
        if isinstance(output, (list, tuple)):
            raise ValueError(f"Layer {name!r} of {model.name!r} has several outputs.")
        outputs[name] = output
    single_input = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(single_input, outputs, name=f"{model.name}_taps")


def describe_layers(model: keras.Model) -> list[dict]:
    """Every tappable layer of `model` with its class, output shape and
    parameter count, in graph order (what `keras-kd inspect` prints).

    Example:

    >>> from keras_kd import models
    >>> rows = describe_layers(models.get("resnet8", (28, 28, 1), 10))
    >>> [(r["name"], r["output_shape"]) for r in rows if r["name"] in ("stage3", "embedding")]
    [('stage3', (None, 7, 7, 64)), ('embedding', (None, 64))]
    """
    rows = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        output = layer.output
        shape = tuple(output.shape) if not isinstance(output, (list, tuple, dict)) else "several outputs"
        rows.append({"name": layer.name, "class": type(layer).__name__, "output_shape": shape,
                     "params": int(layer.count_params()) if layer.built else 0})
    return rows
