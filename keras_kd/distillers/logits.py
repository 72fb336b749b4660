"""Classic logit distillation (Hinton KD) from a frozen teacher."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.distillers.base import BaseDistiller, LossTerm, check_weights, cross_entropy
from keras_kd.distillers.checks import check_teacher_student, freeze
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.soft_target import SoftTargetLoss


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(BaseDistiller):
    """Hinton knowledge distillation from a frozen teacher, inside `model.fit`.

    Loss: `ce_weight * CE(y, z_s) + alpha * T^2 * KL(p^T(z_t) || p^T(z_s))`,
    with `ce_weight = 1 - alpha` unless given (Hinton, Vinyals, Dean,
    "Distilling the Knowledge in a Neural Network", 2015). The teacher runs
    once per step with `training=False` and no gradient, so its weights and
    BatchNorm statistics never change. `call()` returns the student's
    logits: `predict`, `evaluate` and `export` act on the student.

    Metrics: `loss` (weighted total), `student_loss` (CE),
    `distillation_loss` (the soft-target term, unweighted) and `accuracy`
    (student top-1), every step and epoch, in History and TensorBoard.

    Args:
        student: model to train; returns logits.
        teacher: trained model returning logits for the same classes.
        temperature: softmax temperature `T` (> 0).
        alpha: weight of the soft-target term.
        ce_weight: weight of the hard-label cross-entropy; `None` = `1 - alpha`.
        distillation_loss: a `keras_kd.losses` object called as
            `loss(teacher_logits, student_logits)`; default
            `SoftTargetLoss(temperature)`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_kd import Distiller, models
    >>> teacher = models.get("resnet8", (28, 28, 1), 10)
    >>> student = models.get("cnn", (28, 28, 1), 10)
    >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.9)
    >>> distiller.compile(optimizer="adam")
    >>> x = np.random.rand(8, 28, 28, 1).astype("float32")
    >>> y = np.arange(8) % 10
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'distillation_loss', 'loss', 'student_loss']
    """

    def __init__(
        self,
        student: keras.Model,
        teacher: keras.Model,
        temperature: float = 4.0,
        alpha: float = 0.9,
        ce_weight: float | None = None,
        distillation_loss: DistillationLoss | None = None,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        _, num_classes = check_teacher_student(teacher, student)
        if distillation_loss is None:
            distillation_loss = SoftTargetLoss(temperature)
        elif not isinstance(distillation_loss, DistillationLoss):
            raise TypeError(
                "`distillation_loss` must be a keras_kd.losses.DistillationLoss, "
                f"got {type(distillation_loss).__name__}."
            )
        weights = check_weights(
            {"alpha": alpha, "ce_weight": 1.0 - alpha if ce_weight is None else ce_weight}
        )
        kwargs.setdefault("name", "distiller")
        super().__init__(
            student,
            num_classes,
            term_names=("student_loss", "distillation_loss"),
            check_finite=check_finite,
            check_labels=check_labels,
            **kwargs,
        )
        self.teacher = freeze(teacher)
        self.temperature = float(getattr(distillation_loss, "temperature", temperature))
        self.alpha = weights["alpha"]
        self.ce_weight = weights["ce_weight"]
        self.distillation_loss = distillation_loss

    def compute_terms(self, x, y, student_outputs, training):
        student_logits = student_outputs["logits"]
        teacher_logits = ops.stop_gradient(self.teacher(x, training=False))
        return [
            LossTerm("student_loss", self.ce_weight, cross_entropy(y, student_logits)),
            LossTerm(
                "distillation_loss",
                self.alpha,
                self.distillation_loss(teacher_logits, student_logits),
            ),
        ]

    def get_config(self) -> dict:
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "ce_weight": self.ce_weight,
            "distillation_loss": keras.saving.serialize_keras_object(self.distillation_loss),
            "check_finite": self.check_finite,
            "check_labels": self.check_labels,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> "Distiller":
        config = dict(config)
        for key in ("student", "teacher", "distillation_loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
