"""DIST: relational (Pearson) matching of teacher and student predictions."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_flag, check_non_negative, check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, check_logit_shapes, standardize_logits
from keras_kd.registry import SuiteRow, register_loss


def _pearson(a, b, axis: int):
    """Pearson correlation of `a` and `b` along `axis` (cosine of the centred vectors)."""
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = ops.sqrt(ops.sum(ops.square(a), axis=axis) * ops.sum(ops.square(b), axis=axis))
    return ops.sum(a * b, axis=axis) / ops.maximum(norms, 1e-8)


@register_loss("dist", SuiteRow("DIST (beta = gamma = tau = 1)", ({"weight": 1.0},), order=4))
class DISTLoss(DistillationLoss):
    """Inter- and intra-class relations of the predictions (DIST).

    Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger
    Teacher", NeurIPS 2022. With `p = softmax(z / tau)` for each network:

        inter = 1 - mean_i pearson(p_s[i, :], p_t[i, :])   (each sample over classes)
        intra = 1 - mean_c pearson(p_s[:, c], p_t[:, c])   (each class over the batch)
        loss  = tau^2 * (beta * inter + gamma * intra)

    Matching correlations instead of exact probabilities lets a student keep
    the teacher's ranking without its scale, which is what makes DIST robust
    to large teacher-student gaps. Defaults `beta = gamma = tau = 1` follow the
    authors' released implementation; Pearson floors the norm product at
    1e-8 (theirs adds 1e-8 to it: the same values unless a row is constant).
    `logit_standardization=True` z-scores the logits before `tau` (Sun et
    al., CVPR 2024).

    Example:

    >>> import numpy as np
    >>> z = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]], "float32")
    >>> round(float(DISTLoss()(z, z)), 6)
    0.0
    """

    metric_name = "dist_loss"

    def __init__(
        self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0, logit_standardization: bool = False, **kwargs
    ):
        super().__init__(**kwargs)
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        self.beta = check_non_negative("beta", beta)
        self.gamma = check_non_negative("gamma", gamma)
        self.tau = check_positive("tau", tau)

    def check_shapes(self, teacher_shape, student_shape):
        check_logit_shapes("DIST", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if self.logit_standardization:
            teacher_output, student_output = standardize_logits(teacher_output), standardize_logits(student_output)
        p_s = ops.softmax(student_output / self.tau, axis=-1)
        p_t = ops.softmax(teacher_output / self.tau, axis=-1)
        inter = 1.0 - ops.mean(_pearson(p_s, p_t, axis=1))
        intra = 1.0 - ops.mean(_pearson(p_s, p_t, axis=0))
        return self.tau**2 * (self.beta * inter + self.gamma * intra)

    def get_config(self) -> dict:
        config = {**super().get_config(), "beta": self.beta, "gamma": self.gamma, "tau": self.tau}
        if self.logit_standardization:
            config["logit_standardization"] = True
        return config
