"""Hinton soft-target (logit) distillation loss."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss, check_positive


@keras.saving.register_keras_serializable(package="keras_kd")
class SoftTargetLoss(DistillationLoss):
    """Temperature-scaled KL divergence between teacher and student logits.

    `loss = T^2 * mean_batch KL(softmax(z_t / T) || softmax(z_s / T))`

    The `T^2` factor keeps the gradient magnitude independent of `T`
    (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network",
    2015). Both inputs are logits of shape `(batch, num_classes)`.

    Example:

    >>> import numpy as np
    >>> loss = SoftTargetLoss(temperature=4.0)
    >>> z = np.array([[1.0, 2.0, 3.0]], "float32")
    >>> float(loss(z, z))
    0.0
    """

    metric_name = "distillation_loss"

    def __init__(self, temperature: float = 4.0):
        self.temperature = check_positive("temperature", temperature)

    def call(self, teacher_logits, student_logits):
        if teacher_logits.shape[-1] != student_logits.shape[-1]:
            raise ValueError(
                "SoftTargetLoss needs teacher and student logits with the same "
                f"number of classes, got teacher {teacher_logits.shape[-1]} "
                f"and student {student_logits.shape[-1]}."
            )
        t = self.temperature
        log_p_teacher = ops.log_softmax(teacher_logits / t, axis=-1)
        log_p_student = ops.log_softmax(student_logits / t, axis=-1)
        kl = ops.sum(
            ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1
        )
        return (t * t) * ops.mean(kl)

    def get_config(self) -> dict:
        return {"temperature": self.temperature}
