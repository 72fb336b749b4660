"""Hinton soft-target (logit) distillation loss."""

from __future__ import annotations

from keras import ops

from keras_kd.checks import check_flag, check_positive
from keras_kd.losses.base import DistillationLoss, LossContext, check_logit_shapes, standardize_logits
from keras_kd.registry import SuiteRow, register_loss


def soft_target_kl(teacher_logits, student_logits, temperature: float, temperature_scaling: bool = True):
    """`T^2 * mean_batch KL(softmax(z_t / T) || softmax(z_s / T))` (without
    the `T^2` factor when `temperature_scaling` is False)."""
    log_p_teacher = ops.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = ops.log_softmax(student_logits / temperature, axis=-1)
    kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    return (temperature * temperature if temperature_scaling else 1.0) * ops.mean(kl)


@register_loss(
    "kd",
    SuiteRow("KD (ResNet20 teacher)", ({"weight": 0.9, "temperature": 4.0},), student_loss_weight=0.1, order=0),
)
class SoftTargetLoss(DistillationLoss):
    """Temperature-scaled KL divergence between teacher and student logits.

    `loss = T^2 * mean_batch KL(softmax(z_t / T) || softmax(z_s / T))`

    The `T^2` factor keeps the gradient magnitude independent of `T`
    (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    2015). Same role as `keras.distillation.LogitsDistillation`, whose
    `loss="kl_divergence"` computes the same value. Compares logits unless
    layer names are given. `temperature_scaling=False` drops the `T^2`
    factor (OEMC's paper equation has none; its code has it).
    `logit_standardization=True` z-scores both networks' logits per sample
    before the temperature (Sun et al., "Logit Standardization in Knowledge
    Distillation", CVPR 2024; their KD setting uses `T = 2` with it).

    The default `T = 4` (the CRD benchmark's) is also the value chosen on the
    validation split of the standard suite (T in {1, 2, 4, 8}, ResNet20 ->
    ResNet8 on 10% Fashion-MNIST; docs/results.md): 90.63 ± 0.12 test
    accuracy over 3 seeds against 90.06 ± 0.11 for cross-entropy alone.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetLoss(temperature=4.0)
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(loss(z, z))
    0.0
    """

    metric_name = "distillation_loss"

    def __init__(
        self,
        temperature: float = 4.0,
        temperature_scaling: bool = True,
        logit_standardization: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.temperature = check_positive("temperature", temperature)
        self.temperature_scaling = check_flag("temperature_scaling", temperature_scaling)
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)

    def check_shapes(self, teacher_shape, student_shape):
        check_logit_shapes("soft targets", teacher_shape, student_shape)

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        if teacher_output.shape[-1] != student_output.shape[-1]:
            raise ValueError(
                "SoftTargetLoss needs teacher and student logits with the same number of classes, got "
                f"teacher {teacher_output.shape[-1]} and student {student_output.shape[-1]}."
            )
        if self.logit_standardization:
            teacher_output, student_output = standardize_logits(teacher_output), standardize_logits(student_output)
        return soft_target_kl(teacher_output, student_output, self.temperature, self.temperature_scaling)

    def get_config(self) -> dict:
        config = {**super().get_config(), "temperature": self.temperature}
        if not self.temperature_scaling:
            config["temperature_scaling"] = False
        if self.logit_standardization:
            config["logit_standardization"] = True
        return config
