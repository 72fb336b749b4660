"""Relational knowledge distillation (Park, Kim, Lu, Cho, CVPR 2019)."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_non_negative
from keras_kd.losses.base import DistillationLoss, LossContext, check_batched
from keras_kd.registry import SuiteRow, register_loss


def _flat(features):
    return ops.reshape(features, (ops.shape(features)[0], -1))


def _distances(e):
    """Pairwise Euclidean distances divided by their mean over distinct pairs (zero diagonal)."""
    square = ops.sum(ops.square(e), axis=1)
    d2 = ops.maximum(square[:, None] + square[None, :] - 2.0 * ops.matmul(e, ops.transpose(e)), 1e-12)
    off_diagonal = 1.0 - ops.eye(ops.shape(e)[0], dtype=e.dtype)
    d = ops.sqrt(d2) * off_diagonal
    positive = ops.cast(d > 0, e.dtype)
    return d / (ops.sum(d) / ops.maximum(ops.sum(positive), 1.0))


def _angles(e):
    """cos of the angle at j between i and k: <e_i - e_j, e_k - e_j> normalized, (b, b, b)."""
    difference = e[None, :, :] - e[:, None, :]  # [j, i] = e_i - e_j
    unit = difference / ops.maximum(ops.norm(difference, axis=2, keepdims=True), 1e-12)
    return ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))


def _smooth_l1(a, b):
    diff = ops.abs(a - b)
    return ops.mean(ops.where(diff < 1.0, 0.5 * ops.square(diff), diff - 0.5))


@register_loss(
    "rkd",
    SuiteRow("RKD (embedding, distance 25 + angle 50)", ({"weight": 1.0, "teacher_layer_name": "embedding",
                                                           "student_layer_name": "embedding"},),
             student_loss_weight=1.0, order=8),
)
class RKDLoss(DistillationLoss):
    """Distance- and angle-wise relational distillation.

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.
    `psi_D(i, j) = ||e_i - e_j|| / mu` (mu: mean distance of distinct pairs in
    the batch) and `psi_A(i, j, k) = cos angle(e_i - e_j, e_k - e_j)`:

        loss = distance_weight * huber(psi_D^s, psi_D^t) + angle_weight * huber(psi_A^s, psi_A^t)

    Huber with delta 1 (PyTorch's smooth L1), averaged over all b^2 pairs and
    b^3 triplets. Defaults follow the paper and the CRD benchmark
    (RepDistiller): distance 25, angle 50, on the pooled embedding, with
    cross-entropy at weight 1. Widths may differ (only relations are compared).

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(5, 8).astype("float32")
    >>> round(float(RKDLoss()(e, 2 * e)), 5)  # relations are scale-free
    0.0
    """

    metric_name = "rkd_loss"

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, **kwargs):
        super().__init__(**kwargs)
        self.distance_weight = check_non_negative("distance_weight", distance_weight)
        self.angle_weight = check_non_negative("angle_weight", angle_weight)

    def check_shapes(self, teacher_shape, student_shape):
        check_batched("RKD", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        t, s = _flat(teacher_output), _flat(student_output)
        loss = 0.0
        if self.distance_weight:
            loss += self.distance_weight * _smooth_l1(_distances(s), _distances(t))
        if self.angle_weight:
            loss += self.angle_weight * _smooth_l1(_angles(s), _angles(t))
        return loss

    def get_config(self) -> dict:
        return {**super().get_config(), "distance_weight": self.distance_weight, "angle_weight": self.angle_weight}
