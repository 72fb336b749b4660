"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018)."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, check_batched
from keras_kd.registry import SuiteRow, register_loss


def _conditional(features, eps: float):
    """Cosine-similarity kernel turned into per-row probabilities, (batch, batch)."""
    flat = ops.reshape(features, (ops.shape(features)[0], -1))
    flat = flat / (ops.norm(flat, axis=1, keepdims=True) + eps)
    similarity = (ops.matmul(flat, ops.transpose(flat)) + 1.0) / 2.0
    return similarity / ops.sum(similarity, axis=1, keepdims=True)


@register_loss(
    "pkt",
    SuiteRow("PKT (embedding)", ({"weight": 30000.0, "teacher_layer_name": "embedding",
                                 "student_layer_name": "embedding"},), student_loss_weight=1.0, order=7),
)
class PKTLoss(DistillationLoss):
    """KL divergence between the teacher's and student's conditional
    probability distributions over the batch (cosine-similarity kernel).

    Passalis & Tefas, "Learning Deep Representations with Probabilistic
    Knowledge Transfer", ECCV 2018. With `K(a, b) = (cos(a, b) + 1) / 2` and
    `P_ij = K(f_i, f_j) / sum_j K(f_i, f_j)` for each network:

        loss = mean_{i, j} P^t_ij * log((P^t_ij + eps) / (P^s_ij + eps))

    The mean over all b^2 entries (not a sum) and `eps = 1e-7` follow the CRD
    benchmark code (RepDistiller), whose default weight is 30000 on the
    pooled embedding with cross-entropy at weight 1. Widths may differ.

    Example:

    >>> import numpy as np
    >>> f = np.random.rand(4, 16).astype("float32")
    >>> abs(float(PKTLoss()(f, 3 * f))) < 1e-6
    True
    """

    metric_name = "pkt_loss"

    def __init__(self, eps: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        self.eps = check_positive("eps", eps)

    def check_shapes(self, teacher_shape, student_shape):
        check_batched("PKT", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        p_t = _conditional(teacher_output, self.eps)
        p_s = _conditional(student_output, self.eps)
        return ops.mean(p_t * ops.log((p_t + self.eps) / (p_s + self.eps)))

    def get_config(self) -> dict:
        config = super().get_config()
        if self.eps != 1e-7:
            config["eps"] = self.eps
        return config
