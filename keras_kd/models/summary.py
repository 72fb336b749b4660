"""Parameter and FLOP (multiply-add) counts of any Keras model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Size of a model: parameters and multiply-adds for ONE input image."""

    name: str
    params: int
    trainable_params: int
    macs: int

    @property
    def flops(self) -> int:
        """Multiply-adds, the convention of the CRD / RepDistiller tables."""
        return self.macs

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def count_params(model: keras.Model) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    total = int(sum(np.prod(v.shape) for v in model.weights))
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    return total, trainable


def _static(shape) -> list[int]:
    dims = shape.as_list()
    if any(d is None for d in dims):
        raise ValueError(f"cannot count MACs of an op with unknown shape {dims}")
    return dims


def _op_macs(op) -> int:
    kind = op.type
    if kind == "Conv2D":
        kernel = _static(op.inputs[1].shape)  # kh, kw, cin, cout
        out = _static(op.outputs[0].shape)
        return int(np.prod(out)) * kernel[0] * kernel[1] * kernel[2]
    if kind == "DepthwiseConv2dNative":
        kernel = _static(op.inputs[1].shape)  # kh, kw, cin, multiplier
        out = _static(op.outputs[0].shape)
        return int(np.prod(out)) * kernel[0] * kernel[1]
    if kind == "Conv2DBackpropInput":  # transposed convolution
        kernel = _static(op.inputs[1].shape)  # kh, kw, cout, cin
        x = _static(op.inputs[2].shape)
        return int(np.prod(x)) * kernel[0] * kernel[1] * kernel[2]
    if kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
        a = _static(op.inputs[0].shape)
        out = _static(op.outputs[0].shape)
        transpose_a = op.get_attr("transpose_a") if kind == "MatMul" else op.get_attr("adj_x")
        inner = a[-2] if transpose_a else a[-1]
        return int(np.prod(out)) * inner
    return 0


def count_macs(model: keras.Model, input_shape: Sequence[int] | None = None) -> int:
    """Multiply-adds of one forward pass on ONE sample (inference mode).

    Works for Functional, Sequential and subclassed models: the model is
    traced once into a TensorFlow graph and the MACs of every convolution,
    depthwise convolution, transposed convolution and matrix product are
    summed. Element-wise ops (BatchNorm, ReLU, adds) are not counted, as in
    the usual FLOP tables of the distillation literature.
    """
    input_shape = _resolve_input_shape(model, input_shape)
    spec = tf.TensorSpec((1, *input_shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    return int(sum(_op_macs(op) for op in graph.get_operations()))


def _resolve_input_shape(model, input_shape):
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    inputs = getattr(model, "inputs", None)
    if inputs:
        if len(inputs) != 1:
            raise ValueError("count_macs supports single-input models only.")
        dims = tuple(inputs[0].shape[1:])
        if all(d is not None for d in dims):
            return dims
    raise ValueError(
        f"Cannot infer the input shape of model {model.name!r}; pass input_shape=(H, W, C)."
    )


def summarize(model: keras.Model, input_shape: Sequence[int] | None = None) -> ModelSummary:
    """Parameters and multiply-adds of `model`.

    Example:

    >>> from keras_kd import models
    >>> s = summarize(models.get("resnet8", (32, 32, 3), 10))
    >>> s.params, s.macs
    (78714, 12501632)
    """
    total, trainable = count_params(model)
    return ModelSummary(model.name, total, trainable, count_macs(model, input_shape))
