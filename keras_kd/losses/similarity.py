"""Similarity-preserving distillation (Tung & Mori, ICCV 2019)."""

from __future__ import annotations

from keras import ops

from keras_kd.losses.base import DistillationLoss, LossContext, check_batched
from keras_kd.registry import SuiteRow, register_loss


def _gram(features):
    """Row-L2-normalized `F F^T` of the flattened features, (batch, batch)."""
    flat = ops.reshape(features, (ops.shape(features)[0], -1))
    gram = ops.matmul(flat, ops.transpose(flat))
    return gram / ops.maximum(ops.norm(gram, axis=1, keepdims=True), 1e-12)


@register_loss(
    "sp",
    SuiteRow("SP (stage3)", ({"weight": 3000.0, "teacher_layer_name": "stage3", "student_layer_name": "stage3"},),
             student_loss_weight=1.0, order=6),
)
class SimilarityPreservingLoss(DistillationLoss):
    """`||G_t - G_s||_F^2 / b^2`, G = row-normalized batch Gram matrix.

    Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019:
    inputs that the teacher maps to similar activations should be similar
    for the student too. Shapes may differ completely (the Gram matrix is
    batch x batch). The defaults of the CRD benchmark (RepDistiller): the
    last feature map before pooling, weight 3000, cross-entropy at weight 1.

    Example:

    >>> import numpy as np
    >>> f = np.random.rand(4, 3, 3, 8).astype("float32")
    >>> round(float(SimilarityPreservingLoss()(f, 2 * f)), 6)
    0.0
    """

    metric_name = "sp_loss"

    def check_shapes(self, teacher_shape, student_shape):
        check_batched("SP", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        batch = ops.cast(ops.shape(student_output)[0], "float32")
        return ops.sum(ops.square(_gram(teacher_output) - _gram(student_output))) / (batch * batch)
