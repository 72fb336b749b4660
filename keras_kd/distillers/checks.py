"""Validation of models and hyper-parameters shared by all distillers."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_kd._compat import built_input_shape


def model_io(model: keras.Model, role: str) -> tuple[tuple | None, int]:
    """(input shape without batch or None, number of output classes) of `model`.

    Raises a clear error when the model has no weights yet or its output is
    not a `(batch, num_classes)` logits tensor.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"The {role} must be a keras.Model, got {type(model).__name__}.")
    inputs = getattr(model, "inputs", None)
    outputs = getattr(model, "outputs", None)
    input_shape = None
    if inputs:
        if len(inputs) != 1:
            raise ValueError(f"The {role} {model.name!r} must take a single image input.")
        input_shape = tuple(inputs[0].shape[1:])
    if outputs:
        if len(outputs) != 1:
            raise ValueError(
                f"The {role} {model.name!r} must return one logits tensor, "
                f"it returns {len(outputs)} outputs."
            )
        output_shape = tuple(outputs[0].shape)
    elif model.built and input_shape is None and built_input_shape(model) is not None:
        input_shape = built_input_shape(model)
        output_shape = tuple(model(np.zeros((1, *input_shape), "float32"), training=False).shape)
    else:
        raise ValueError(
            f"The {role} {model.name!r} is not built: its input shape and number "
            "of classes are unknown. Build it first (e.g. `model.build((None, H, W, C))` "
            "or call it on a batch)."
        )
    if len(output_shape) != 2 or output_shape[-1] is None:
        raise ValueError(
            f"The {role} {model.name!r} must return logits of shape (batch, num_classes); "
            f"its output shape is {output_shape}."
        )
    return input_shape, int(output_shape[-1])


def check_teacher_student(teacher: keras.Model, student: keras.Model) -> tuple[tuple | None, int]:
    """Checks that a (trained) teacher and a student agree on inputs and classes.

    Returns (input_shape, num_classes).
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"The teacher must be a keras.Model, got {type(teacher).__name__}.")
    if not teacher.built or not teacher.weights:
        raise ValueError(
            f"The teacher {teacher.name!r} is not built (it has no weights). A teacher "
            "must be a trained model: load it or train it before distilling."
        )
    teacher_shape, teacher_classes = model_io(teacher, "teacher")
    if not student.built:
        shape = teacher_shape
        if shape is None:
            raise ValueError("Cannot build the student: the teacher's input shape is unknown.")
        student(np.zeros((1, *shape), "float32"), training=False)
    student_shape, student_classes = model_io(student, "student")
    if teacher_classes != student_classes:
        raise ValueError(
            f"Teacher {teacher.name!r} predicts {teacher_classes} classes but student "
            f"{student.name!r} predicts {student_classes}; they must match."
        )
    if teacher_shape and student_shape and not _compatible(teacher_shape, student_shape):
        raise ValueError(
            f"Teacher {teacher.name!r} takes inputs of shape {teacher_shape} but student "
            f"{student.name!r} takes {student_shape}; both must see the same images."
        )
    return student_shape or teacher_shape, student_classes


def _compatible(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b, strict=False))


def freeze(model: keras.Model) -> keras.Model:
    """Marks a teacher non-trainable so no optimizer ever updates it."""
    model.trainable = False
    return model


_PROBABILITY_ACTIVATIONS = ("softmax", "sigmoid")


def _activation_name(layer) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None) if activation is not None else None
    return name if name in _PROBABILITY_ACTIVATIONS else None


class PreActivation(keras.layers.Layer):
    """Calls a Dense/Conv layer with its fused activation switched off: the
    logits of a classifier whose last layer applies softmax/sigmoid, from the
    same weights (they stay the wrapped layer's)."""

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def call(self, inputs):
        activation = self.layer.activation
        self.layer.activation = keras.activations.linear
        try:
            return self.layer(inputs)
        finally:
            self.layer.activation = activation


def _output_layer(model: keras.Model):
    output = model.outputs[0]
    for layer in reversed(model.layers):
        if layer.output is output:
            return layer
    return None


def logits_model(model: keras.Model, role: str) -> keras.Model:
    """`model` itself when it returns logits; for a Functional/Sequential model
    whose last layer applies softmax or sigmoid (e.g. `keras.applications`
    classifiers), a view of the same layers that returns the values BEFORE
    that activation. Outputs that are probabilities anyway (rows on the
    simplex) raise a clear error."""
    if getattr(model, "outputs", None) and len(model.outputs) == 1:
        layer = _output_layer(model)
        name = _activation_name(layer) if layer is not None else None
        if name is not None:
            if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)):
                logits = layer.input
            else:  # a Dense/Conv layer with a fused activation
                logits = PreActivation(layer, name=f"{layer.name}_logits")(layer.input)
            return keras.Model(model.inputs, logits, name=f"{model.name}_logits")
    _refuse_probabilities(model, role)
    return model


def _refuse_probabilities(model: keras.Model, role: str) -> None:
    inputs = getattr(model, "inputs", None)
    shape = tuple(inputs[0].shape[1:]) if inputs else built_input_shape(model)
    if shape is None or any(d is None for d in shape):
        return
    probe = np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")
    outputs = model(probe, training=False)
    if isinstance(outputs, (dict, list, tuple)):
        return
    outputs = ops.convert_to_numpy(ops.cast(outputs, "float32"))
    if outputs.ndim == 2 and outputs.shape[-1] > 1:
        simplex = np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-3)
        if simplex:
            raise ValueError(
                f"The {role} {model.name!r} returns probabilities (its outputs are non-negative and sum to 1), "
                "but distillation needs logits and the activation cannot be removed from its graph. Build it "
                "without the final softmax (keras.applications: classifier_activation=None)."
            )
