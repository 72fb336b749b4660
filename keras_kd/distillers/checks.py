"""Validation of models and hyper-parameters shared by all distillers."""

from __future__ import annotations

import keras
import numpy as np


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
    elif model.built and input_shape is None and _build_input_shape(model) is not None:
        input_shape = _build_input_shape(model)
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


def _build_input_shape(model: keras.Model) -> tuple | None:
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if shape is not None and len(shape) > 1:
            return tuple(shape[1:])
    return None


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
