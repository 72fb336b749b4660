"""Normalized embedding mimicry (EKD's feature term)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.registry import register_loss


@register_loss("embedding")
class EmbeddingMimicryLoss(DistillationLoss):
    """`mean_batch || l2n(phi(h_s)) - l2n(h_t) ||^2` between pooled embeddings.

    Both vectors are L2-normalized per sample, so the value lies in [0, 4]
    (`2 - 2 cos`) whatever the feature scale (Asif, Tang, Harrer, "Ensemble
    Knowledge Distillation for Learning Improved and Efficient Networks",
    ECAI 2020). `phi` is a trainable bias-free Dense adapter declared in
    `build_parts`; by default only where the widths differ
    (`adapter="if_needed"`), `"always"` adds one even for equal widths (a
    branch then need not reproduce another network's raw coordinates),
    `"never"` requires equal widths.

    Example:

    >>> import numpy as np
    >>> t = np.array([[1.0, 0.0]], "float32")
    >>> float(EmbeddingMimicryLoss()(t, np.array([[0.0, 3.0]], "float32")))
    2.0
    """

    metric_name = "embedding_loss"

    def __init__(self, adapter: str = "if_needed", **kwargs):
        super().__init__(**kwargs)
        if adapter not in ("if_needed", "always", "never"):
            raise ValueError(f"`adapter` must be 'if_needed', 'always' or 'never', got {adapter!r}.")
        self.adapter = adapter

    def check_shapes(self, teacher_shape, student_shape):
        if len(teacher_shape) != 2 or len(student_shape) != 2:
            raise ValueError(
                "embedding mimicry needs pooled (batch, dim) embeddings; got teacher "
                f"{describe(teacher_shape)} and student {describe(student_shape)}."
            )
        if self.adapter == "never" and teacher_shape[-1] != student_shape[-1]:
            raise ValueError(
                f"adapter='never' needs equal widths; got teacher {describe(teacher_shape)} and "
                f"student {describe(student_shape)}."
            )

    def build_parts(self, teacher_shape, student_shape):
        if self.adapter == "never" or (self.adapter == "if_needed" and teacher_shape[-1] == student_shape[-1]):
            return None
        adapter = keras.layers.Dense(teacher_shape[-1], use_bias=False)
        adapter.build(student_shape)
        return adapter

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.parts is not None:
            student_output = ops.cast(context.parts(student_output), "float32")
        if teacher_output.shape[-1] != student_output.shape[-1]:
            raise ValueError(
                "EmbeddingMimicryLoss needs embeddings of the same width (adapt the student's first): "
                f"teacher {teacher_output.shape[-1]}, student {student_output.shape[-1]}."
            )
        difference = ops.normalize(student_output, axis=-1) - ops.normalize(teacher_output, axis=-1)
        return ops.mean(ops.sum(ops.square(difference), axis=-1))

    def get_config(self) -> dict:
        return {**super().get_config(), "adapter": self.adapter}
