"""Neuron selectivity transfer (Huang & Wang, 2017)."""

from __future__ import annotations

from keras import ops

from keras_kd.losses.attention import _common_size, _pool_to, check_poolable_maps
from keras_kd.losses.base import DistillationLoss, LossContext
from keras_kd.registry import SuiteRow, register_loss


def _channel_maps(features):
    """(batch, H*W, channels), each channel's spatial map L2-normalized."""
    batch, height, width, channels = (ops.shape(features)[0], *features.shape[1:])
    maps = ops.reshape(features, (batch, height * width, channels))
    return maps * ops.rsqrt(ops.maximum(ops.sum(ops.square(maps), axis=1, keepdims=True), 1e-24))


def _squared_mmd(t, s):
    """Mean k(t, t') + mean k(s, s') - 2 mean k(s, t) for k(x, y) = (x . y)^2
    over the columns of t (batch, P, Ct) and s (batch, P, Cs), averaged over
    the batch.

    With A = T^T S, `sum k(t_c, s_d) = ||T^T S||_F^2 = <T T^T, S S^T>_F`, so
    the whole sum is also `||T T^T / Ct - S S^T / Cs||_F^2`: two (P, P) Grams
    instead of three channel-by-channel products. Whichever form needs fewer
    multiplications for these shapes is used (the P x P one on small maps).
    """
    positions, ct, cs = t.shape[1], t.shape[2], s.shape[2]
    if positions * (ct + cs) < ct * ct + ct * cs + cs * cs:
        difference = ops.einsum("bpc,bqc->bpq", t, t) / ct - ops.einsum("bpc,bqc->bpq", s, s) / cs
        return ops.mean(ops.sum(ops.square(difference), axis=(1, 2)))

    def poly_mean(a, b):
        return ops.mean(ops.square(ops.einsum("bpc,bpd->bcd", a, b)))

    return poly_mean(t, t) + poly_mean(s, s) - 2.0 * poly_mean(s, t)


@register_loss(
    "nst",
    SuiteRow("NST (stages 1-3)", tuple({"weight": 50.0, "teacher_layer_name": f"stage{i}",
                                        "student_layer_name": f"stage{i}"} for i in (1, 2, 3)),
             student_loss_weight=1.0, order=9),
)
class NSTLoss(DistillationLoss):
    """Squared MMD between the teacher's and student's channel-map
    distributions with the polynomial kernel `k(x, y) = (x . y)^2`.

    Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", 2017. Each channel's spatial map, L2-normalized,
    is one sample:

        loss = mean k(t, t') + mean k(s, s') - 2 mean k(s, t)

    Channel counts may differ; a larger spatial map is average-pooled to the
    smaller one. The CRD benchmark (RepDistiller) applies it to every
    intermediate stage at weight 50 with cross-entropy at weight 1.

    Example:

    >>> import numpy as np
    >>> f = np.random.rand(2, 4, 4, 6).astype("float32")
    >>> round(float(NSTLoss()(f, 5 * f)), 5)
    0.0
    """

    metric_name = "nst_loss"

    def check_shapes(self, teacher_shape, student_shape):
        check_poolable_maps("NST", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        size = _common_size(teacher_output.shape, student_output.shape)
        return _squared_mmd(_channel_maps(_pool_to(teacher_output, size)),
                            _channel_maps(_pool_to(student_output, size)))
