"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss, check_positive


def attention_map(features, p: float):
    """`l2_normalize(flatten(mean_c(|A|^p)))` per sample, shape (batch, H*W)."""
    # p = 2 is the common case: square avoids the slow element-wise pow kernel.
    magnitude = ops.square(features) if p == 2 else ops.power(ops.abs(features), p)
    a = ops.mean(magnitude, axis=-1)
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    return a / ops.maximum(ops.norm(a, axis=-1, keepdims=True), 1e-12)


def _pool_to(features, size: tuple[int, int]):
    height, width = features.shape[1], features.shape[2]
    if (height, width) == size:
        return features
    if height % size[0] or width % size[1] or height // size[0] != width // size[1]:
        raise ValueError(
            f"AttentionTransferLoss cannot pool a {height}x{width} map to {size[0]}x{size[1]}."
        )
    factor = height // size[0]
    return ops.average_pool(features, factor, factor, padding="valid")


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransferLoss(DistillationLoss):
    """`mean((Q(A_s) - Q(A_t))^2)` over batch and positions, Q = attention map.

    Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017.
    Channel counts may differ (the map averages over channels); if spatial
    sizes differ the larger map is average-pooled to the smaller one. No
    trainable parameters.

    Example:

    >>> import numpy as np
    >>> a = np.random.rand(2, 8, 8, 16).astype("float32")
    >>> round(float(AttentionTransferLoss()(a, 3 * a)), 6)  # same attention up to scale
    0.0
    """

    metric_name = "at_loss"

    def __init__(self, p: float = 2.0):
        self.p = check_positive("p", p)

    def call(self, teacher_features, student_features):
        for role, f in (("teacher", teacher_features), ("student", student_features)):
            if len(f.shape) != 4:
                raise ValueError(
                    f"AttentionTransferLoss needs (batch, H, W, C) feature maps; the {role} tap "
                    f"has shape {tuple(f.shape)}."
                )
        size = (
            min(teacher_features.shape[1], student_features.shape[1]),
            min(teacher_features.shape[2], student_features.shape[2]),
        )
        q_t = attention_map(_pool_to(teacher_features, size), self.p)
        q_s = attention_map(_pool_to(student_features, size), self.p)
        return ops.mean(ops.square(q_s - q_t))

    def get_config(self) -> dict:
        return {"p": self.p}
