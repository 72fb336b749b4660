"""Block-wise views of Functional models: cut a network at named layers.

Multi-branch students (EKD), student-friendly teachers (SFTN) and online
ensembles (OEMC) all re-wire networks block by block: a shared stem feeding
several branches, a teacher stage feeding a student's later stages. The views
share layers, and so weights, with the model they were cut from.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_kd.taps import layer_names

#: Where zoo models are cut into stem / stage1..3 / head blocks.
ZOO_BOUNDARIES = ("stem", "stage1", "stage2", "stage3")


def split(model: keras.Model, boundaries: Sequence[str] = ZOO_BOUNDARIES) -> list[keras.Model]:
    """Cuts a Functional `model` at the outputs of the layers `boundaries`.

    Returns `len(boundaries) + 1` models: input -> boundaries[0],
    boundaries[0] -> boundaries[1], ..., boundaries[-1] -> model output.
    Chaining them reproduces `model`; they share its layers and weights, so
    training a block trains the model. Each block is named
    `"{model.name}_{end}"` where `end` is the boundary it ends at (the last
    one: `"{model.name}_head"`).

    Every path from the input to the output must pass through each boundary
    (true for the zoo's stem/stage/embedding layers, not for a layer inside
    a residual block).

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> net = models.get("resnet8", (28, 28, 1), 10)
    >>> blocks = split(net, ("stem", "stage1", "stage2", "stage3"))
    >>> [b.name for b in blocks]
    ['resnet8_stem', 'resnet8_stage1', 'resnet8_stage2', 'resnet8_stage3', 'resnet8_head']
    >>> x = np.ones((1, 28, 28, 1), "float32")
    >>> y = x
    >>> for block in blocks:
    ...     y = block(y)
    >>> bool(np.allclose(y, net(x), atol=1e-5))
    True
    """
    boundaries = list(boundaries)
    if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
        raise ValueError(
            f"Model {model.name!r} is not Functional: only Functional/Sequential models "
            "can be cut into blocks by layer name."
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"Model {model.name!r} must have one input and one output to be cut into blocks.")
    available = layer_names(model)
    missing = [name for name in boundaries if name not in available]
    if missing:
        raise ValueError(
            f"Model {model.name!r} has no layer named {', '.join(map(repr, missing))}. "
            f"Available layers: {', '.join(available)}."
        )
    order = [available.index(name) for name in boundaries]
    if order != sorted(order) or len(set(order)) != len(order):
        raise ValueError(f"Block boundaries {boundaries} must be distinct and in the model's layer order.")
    ends = [model.get_layer(name).output for name in boundaries] + [model.outputs[0]]
    names = [*boundaries, "head"]
    blocks, start = [], model.inputs[0]
    for end, name in zip(ends, names, strict=True):
        try:
            blocks.append(keras.Model(start, end, name=f"{model.name}_{name}"))
        except ValueError as error:
            raise ValueError(
                f"Cannot cut {model.name!r} at {name!r}: some path into it bypasses the previous "
                f"boundary (a skip connection crosses the cut). Keras said: {error}"
            ) from error
        start = end
    return blocks


def chain(blocks: Sequence[keras.Model], name: str) -> keras.Model:
    """One Functional model running `blocks` in order (weights shared with them).

    Example:

    >>> from keras_kd import models
    >>> net = models.get("resnet8", (28, 28, 1), 10)
    >>> chain(split(net, ("stage2",)), "again").output_shape
    (None, 10)
    """
    if not blocks:
        raise ValueError("chain() needs at least one block.")
    inputs = keras.Input(shape=tuple(blocks[0].inputs[0].shape[1:]), name="image")
    x = inputs
    for block in blocks:
        x = block(x)
    return keras.Model(inputs, x, name=name)
