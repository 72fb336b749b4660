"""Trainable connectors owned by distillers (never part of the student)."""

from __future__ import annotations

import math

import keras
from keras import ops

from keras_kd.checks import check_flag
from keras_kd.models.layers import BN_EPSILON, BN_MOMENTUM


def _spatial_ratio(student_size: int, teacher_size: int) -> tuple[str, int]:
    if student_size == teacher_size:
        return "same", 1
    if student_size > teacher_size and student_size % teacher_size == 0:
        return "down", student_size // teacher_size
    if teacher_size > student_size and teacher_size % student_size == 0:
        return "up", teacher_size // student_size
    raise ValueError(
        f"Cannot map a {student_size}-pixel student map onto a {teacher_size}-pixel teacher map: "
        "the sizes must divide each other."
    )


@keras.saving.register_keras_serializable(package="keras_kd")
class HintRegressor(keras.layers.Layer):
    """FitNet regressor: student map -> teacher map shape (conv + BN + ReLU).

    A 3x3 convolution maps student channels to teacher channels; it has stride
    `s` when the student map is `s` times larger, and is a stride-`s`
    transposed convolution when the student map is `s` times smaller
    (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015). For
    rank-2 features (pooled embeddings) it is Dense + BN + ReLU.
    `kernel_size=1, batchnorm=False, activation=None` is a plain 1x1 channel
    map (OEMC's adapters).

    Args:
        teacher_shape: teacher feature shape without batch, `(H, W, C)` or `(D,)`.
        activation: `"relu"` (FitNet/CRD default) or `None` for targets that
            can be negative (e.g. pre-activation WRN stage outputs).
    """

    def __init__(
        self,
        teacher_shape,
        activation: str | None = "relu",
        kernel_size: int = 3,
        batchnorm: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.teacher_shape = tuple(int(d) for d in teacher_shape)
        self.activation = activation
        self.kernel_size = int(kernel_size)
        self.batchnorm = check_flag("batchnorm", batchnorm)
        self.transform = None
        self.norm = (
            keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON) if batchnorm else None
        )
        self.act = keras.layers.Activation(activation) if activation else None

    def build(self, input_shape):
        student_shape = tuple(input_shape[1:])
        if len(student_shape) != len(self.teacher_shape):
            raise ValueError(
                f"Hint regressor cannot map student features of shape {student_shape} to teacher "
                f"features of shape {self.teacher_shape}: ranks differ."
            )
        channels = self.teacher_shape[-1]
        if len(student_shape) == 1:
            self.transform = keras.layers.Dense(channels, use_bias=False)
        elif len(student_shape) == 3:
            direction, stride = _spatial_ratio(student_shape[0], self.teacher_shape[0])
            if _spatial_ratio(student_shape[1], self.teacher_shape[1]) != (direction, stride):
                raise ValueError(
                    f"Student map {student_shape[:2]} and teacher map {self.teacher_shape[:2]} "
                    "differ by different factors in height and width."
                )
            layer = keras.layers.Conv2DTranspose if direction == "up" else keras.layers.Conv2D
            kernel = max(self.kernel_size, stride) if direction == "up" else self.kernel_size
            self.transform = layer(channels, kernel, strides=stride, padding="same", use_bias=False)
        else:
            raise ValueError(f"Hint regressor needs (H, W, C) or (D,) features, got {student_shape}.")
        self.transform.build(input_shape)
        if self.norm is not None:
            self.norm.build((*input_shape[:1], *self.teacher_shape))
        self.built = True

    def call(self, inputs, training=None):
        x = self.transform(inputs)
        if self.norm is not None:
            x = self.norm(x, training=training)
        return self.act(x) if self.act is not None else x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.teacher_shape)

    def get_config(self):
        return {**super().get_config(), "teacher_shape": self.teacher_shape, "activation": self.activation,
                "kernel_size": self.kernel_size, "batchnorm": self.batchnorm}


@keras.saving.register_keras_serializable(package="keras_kd")
class PairEmbedding(keras.layers.Layer):
    """Two linear maps of flattened features to a common width `dim`: one for
    the teacher's, one for the student's (CC and CRD train both; the
    distiller owns them)."""

    def __init__(self, dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.student_embed = keras.layers.Dense(self.dim, name="student_embed")
        self.teacher_embed = keras.layers.Dense(self.dim, name="teacher_embed")

    @classmethod
    def for_shapes(cls, dim: int, teacher_shape, student_shape, **kwargs) -> PairEmbedding:
        """Built for outputs of these shapes (with batch): their flattened widths."""
        embedding = cls(dim, **kwargs)
        embedding.build((flat_width(teacher_shape), flat_width(student_shape)))
        return embedding

    def build(self, shapes):
        teacher_width, student_width = shapes
        self.teacher_embed.build((None, teacher_width))
        self.student_embed.build((None, student_width))

    def call(self, teacher, student):
        flat = lambda x: ops.reshape(x, (ops.shape(x)[0], -1))  # noqa: E731
        return self.teacher_embed(flat(teacher)), self.student_embed(flat(student))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim}


def flat_width(shape) -> int:
    """Values per example of an output of `shape` (with batch)."""
    return math.prod(int(d) for d in shape[1:])
