"""DKD: decoupled knowledge distillation (target-class and non-target-class terms)."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_count, check_flag, check_non_negative, check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, check_logit_shapes, standardize_logits
from keras_kd.registry import SuiteRow, register_loss


def _kl(p, log_p, log_q):
    """`mean_batch sum_classes p * (log p - log q)`, with 0 * log 0 = 0."""
    return ops.mean(ops.sum(ops.where(p > 0, p * (log_p - log_q), 0.0), axis=-1))


@register_loss(
    "dkd",
    SuiteRow("DKD (alpha 1, beta 8, T 4, 20-epoch warm-up)", ({"weight": 1.0},), student_loss_weight=1.0, order=5),
)
class DecoupledKDLoss(DistillationLoss):
    """Decoupled Knowledge Distillation (DKD).

    Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022.
    With `p = softmax(z / T)` of each network and `t` the label:

        TCKD = KL([p_t, 1 - p_t]_teacher || [p_t, 1 - p_t]_student)     (binary: target vs rest)
        NCKD = KL(p^_teacher || p^_student), p^ = softmax over the non-target classes
        loss = ramp * T^2 * (alpha * TCKD + beta * NCKD),  ramp = min((epoch + 1) / warmup_epochs, 1)

    Classic KD equals `TCKD + (1 - p_t^teacher) * NCKD`; DKD frees the NCKD
    weight (`beta`) from the teacher's confidence. Defaults follow the
    benchmark code of the paper's tables (mdistiller, CIFAR-100): alpha 1,
    beta 8, T 4, the loss ramped in linearly over the first 20 epochs, and
    cross-entropy at weight 1 beside it (`student_loss_weight=1.0`). The paper
    tunes beta per teacher-student pair (1 to 8 on CIFAR-100). `epoch` is the
    0-based epoch of the step (so epoch 0 has ramp 1/20, as mdistiller's
    1-based counter). Needs the labels, which distillers pass.

    `logit_standardization=True` z-scores both networks' logits before the
    temperature (Sun et al., CVPR 2024).

    Example:

    >>> import numpy as np
    >>> z = np.array([[3.0, 1.0, 0.0], [0.5, 2.0, -1.0]], "float32")
    >>> round(float(DecoupledKDLoss()(z, z, labels=np.array([0, 1]), epoch=30)), 6)
    0.0
    """

    metric_name = "dkd_loss"

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        warmup_epochs: int = 20,
        logit_standardization: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.alpha = check_non_negative("alpha", alpha)
        self.beta = check_non_negative("beta", beta)
        self.temperature = check_positive("temperature", temperature)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs)
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)

    def check_shapes(self, teacher_shape, student_shape):
        check_logit_shapes("DKD", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if context.labels is None:
            raise ValueError("DecoupledKDLoss needs the labels: call it with labels=... (distillers pass them).")
        if self.logit_standardization:
            teacher_output, student_output = standardize_logits(teacher_output), standardize_logits(student_output)
        t = self.temperature
        target = ops.one_hot(ops.cast(ops.reshape(context.labels, (-1,)), "int32"), ops.shape(student_output)[-1])
        p_s = ops.softmax(student_output / t, axis=-1)
        p_t = ops.softmax(teacher_output / t, axis=-1)
        binary_s = ops.stack([ops.sum(p_s * target, -1), ops.sum(p_s * (1.0 - target), -1)], axis=-1)
        binary_t = ops.stack([ops.sum(p_t * target, -1), ops.sum(p_t * (1.0 - target), -1)], axis=-1)
        tckd = _kl(binary_t, ops.log(ops.maximum(binary_t, 1e-30)), ops.log(ops.maximum(binary_s, 1e-30)))
        # The target class masked out with a large negative logit (as mdistiller).
        log_rest_s = ops.log_softmax(student_output / t - 1000.0 * target, axis=-1)
        log_rest_t = ops.log_softmax(teacher_output / t - 1000.0 * target, axis=-1)
        nckd = _kl(ops.exp(log_rest_t), log_rest_t, log_rest_s)
        loss = t * t * (self.alpha * tckd + self.beta * nckd)
        if self.warmup_epochs:
            ramp = ops.minimum((ops.cast(context.epoch, "float32") + 1.0) / float(self.warmup_epochs), 1.0)
            loss = ramp * loss
        return loss

    def get_config(self) -> dict:
        config = {**super().get_config(), "alpha": self.alpha, "beta": self.beta, "temperature": self.temperature,
                  "warmup_epochs": self.warmup_epochs}
        if self.logit_standardization:
            config["logit_standardization"] = True
        return config
