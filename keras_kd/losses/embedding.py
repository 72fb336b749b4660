"""Normalized embedding mimicry (EKD's feature term)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss


@keras.saving.register_keras_serializable(package="keras_kd")
class EmbeddingMimicryLoss(DistillationLoss):
    """`mean_batch || l2n(h_s) - l2n(h_t) ||^2` between pooled embeddings.

    Both vectors are L2-normalized per sample, so the value lies in [0, 4]
    (`2 - 2 cos`) whatever the feature scale (Asif, Tang, Harrer, "Ensemble
    Knowledge Distillation for Learning Improved and Efficient Networks",
    ECAI 2020). When dimensions differ the distiller maps the student
    embedding with a trainable Dense adapter first (`build_adapter`).

    Example:

    >>> import numpy as np
    >>> t = np.array([[1.0, 0.0]], "float32")
    >>> float(EmbeddingMimicryLoss()(t, np.array([[0.0, 3.0]], "float32")))
    2.0
    """

    metric_name = "embedding_loss"
    needs_adapter = True

    def build_adapter(self, student_shape, teacher_shape, name: str):
        """A bias-free Dense map to the teacher's width, or None when widths agree."""
        if tuple(student_shape[1:]) == tuple(teacher_shape[1:]):
            return None
        if len(teacher_shape) != 2 or len(student_shape) != 2:
            raise ValueError(
                f"Embedding mimicry needs pooled (batch, dim) features, got student {student_shape} "
                f"and teacher {teacher_shape}."
            )
        return keras.layers.Dense(teacher_shape[-1], use_bias=False, name=name)

    def call(self, teacher_embedding, student_embedding):
        if teacher_embedding.shape[-1] != student_embedding.shape[-1]:
            raise ValueError(
                "EmbeddingMimicryLoss needs embeddings of the same width (adapt the student's first): "
                f"teacher {teacher_embedding.shape[-1]}, student {student_embedding.shape[-1]}."
            )
        difference = ops.normalize(student_embedding, axis=-1) - ops.normalize(teacher_embedding, axis=-1)
        return ops.mean(ops.sum(ops.square(difference), axis=-1))
