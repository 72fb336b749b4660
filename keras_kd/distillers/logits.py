"""Logit (Hinton KD) and feature distillation from a frozen teacher, in one pass."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd.checks import check_count
from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
    output_shapes,
    reject_positional,
)
from keras_kd.distillers.checks import check_teacher_student, freeze, logits_model
from keras_kd.losses.base import LOGITS, DistillationLoss, in_window
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.taps import tap_model


def term_names(losses: Sequence[DistillationLoss]) -> list[str]:
    """Unique metric names for `losses`, in order (a shared default name is
    suffixed with the student layer)."""
    defaults = [loss.name for loss in losses]
    names = []
    for loss, default in zip(losses, defaults, strict=True):
        name = default
        if defaults.count(default) > 1 and loss.name == loss.metric_name:
            name = f"{default}_{loss.student_key}"
        if name in names or name in ("student_loss", "loss"):
            raise ValueError(f"Two distillation losses share the metric name {name!r}; give them `name=`.")
        names.append(name)
    return names


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(BaseDistiller):
    """Knowledge distillation from a frozen teacher, inside `model.fit`.

    Loss: `student_loss_weight * CE(y, z_s) + sum_i w_i * loss_i(teacher, student)`
    where each `loss_i` is a `keras_kd.losses.DistillationLoss` reading the
    logits or a named layer of each network (Hinton KD: `SoftTargetLoss`,
    Hinton, Vinyals, Dean 2015; FitNet: `HintLoss`; attention transfer;
    locality-preserving embedding; any Keras loss through `FeatureLoss`).
    Every loss reads its outputs from the SAME forward pass: each network
    runs exactly once per step, whatever the number of terms (unlike
    `keras.distillation.Distiller`, which runs the student twice with feature
    losses); once a term's `active_epochs` window has closed (AB's or FSP's
    pre-training stage), `fit` leaves it out of the step, and the teacher's
    pass too when no other term reads it. Trainable parts a loss declares
    (the FitNet regressor) are created here, trained with the student, saved
    with the distiller and never added to the student.

    The teacher runs with `training=False` and no gradient, so its weights
    and BatchNorm statistics never change. A teacher or student whose last
    layer applies softmax/sigmoid (`keras.applications` classifiers) is read
    BEFORE that activation. `call()` returns the student's logits:
    `predict`, `evaluate` and `export` act on the student.

    Coming from `keras.distillation`: same keywords (`teacher`, `student`,
    `distillation_losses`, `distillation_loss_weights`,
    `student_loss_weight`); weights are absolute (FitNet's 100, AT's 1000 as
    published) rather than `(1 - student_loss_weight) * sum(w_i * loss_i)`,
    and the student loss is always cross-entropy from logits (no `compile(loss=)`).

    Metrics: `loss` (weighted total), `student_loss` (CE), one per
    distillation loss (`distillation_loss`, `hint_loss`, `at_loss`, ...;
    unweighted) and `accuracy` (student top-1), every step and epoch.

    Args:
        teacher: trained model returning logits for the same classes.
        student: model to train; returns logits.
        distillation_losses: one loss or a list; default
            `SoftTargetLoss(temperature=4.0)` at weight 0.9.
        distillation_loss_weights: one weight per loss (>= 0); default 1.0
            each (0.9 for the default loss).
        student_loss_weight: weight of the hard-label cross-entropy (>= 0).
        student_loss_start_epoch: the cross-entropy counts from this 0-based
            epoch on (0, the default: always); before it, it is 0 (value,
            gradient and `student_loss` metric). With a loss active in
            `[0, n)` (`active_epochs`), `n` makes that loss a pre-training
            stage inside the same `fit` (RepDistiller's AB initialisation).
        check_finite, check_labels: see `BaseDistiller`.

    Example:

    >>> import numpy as np
    >>> from keras_kd import Distiller, losses, models
    >>> teacher = models.get("resnet8", (28, 28, 1), 10)
    >>> student = models.get("cnn", (28, 28, 1), 10)
    >>> distiller = Distiller(
    ...     teacher=teacher, student=student,
    ...     distillation_losses=[losses.SoftTargetLoss(temperature=4.0),
    ...                          losses.AttentionTransferLoss(teacher_layer_name="stage2",
    ...                                                       student_layer_name="stage2")],
    ...     distillation_loss_weights=[0.9, 1000.0], student_loss_weight=0.1)
    >>> distiller.compile(optimizer="adam")
    >>> x = np.random.rand(8, 28, 28, 1).astype("float32")
    >>> history = distiller.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    >>> sorted(history.history)
    ['accuracy', 'at_loss', 'distillation_loss', 'loss', 'student_loss']
    """

    def __init__(
        self,
        *args,
        teacher: keras.Model | None = None,
        student: keras.Model | None = None,
        distillation_losses: DistillationLoss | Sequence[DistillationLoss] | None = None,
        distillation_loss_weights: float | Sequence[float] | None = None,
        student_loss_weight: float = 0.1,
        student_loss_start_epoch: int = 0,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("Distiller", args, "teacher=..., student=...")
        if teacher is None or student is None:
            raise TypeError("Distiller needs both `teacher=` and `student=`.")
        _, num_classes = check_teacher_student(teacher, student)
        default = distillation_losses is None
        if default:
            distillation_losses = [SoftTargetLoss(temperature=4.0)]
        elif isinstance(distillation_losses, DistillationLoss):
            distillation_losses = [distillation_losses]
        distillation_losses = list(distillation_losses)
        for loss in distillation_losses:
            if not isinstance(loss, DistillationLoss):
                raise TypeError(
                    "`distillation_losses` must hold keras_kd.losses.DistillationLoss objects "
                    f"(e.g. losses.get('kd')), got {loss!r}."
                )
        if distillation_loss_weights is None:
            distillation_loss_weights = [0.9 if default else 1.0] * len(distillation_losses)
        elif not isinstance(distillation_loss_weights, (list, tuple)):
            distillation_loss_weights = [distillation_loss_weights]
        if len(distillation_loss_weights) != len(distillation_losses):
            raise ValueError(
                f"{len(distillation_loss_weights)} distillation_loss_weights for "
                f"{len(distillation_losses)} distillation_losses: give one weight per loss."
            )
        names = term_names(distillation_losses)
        weights = check_weights(
            {"student_loss_weight": student_loss_weight}
            | {f"weight of {name}": w for name, w in zip(names, distillation_loss_weights, strict=True)}
        )
        teacher_logits = logits_model(teacher, "teacher")
        kwargs.setdefault("name", "distiller")
        super().__init__(
            student=student,
            num_classes=num_classes,
            term_names=("student_loss", *names),
            student_taps=[key for loss in distillation_losses for key in loss.student_keys],
            check_finite=check_finite,
            check_labels=check_labels,
            **kwargs,
        )
        self.teacher = freeze(teacher)
        self.student_loss_weight = weights["student_loss_weight"]
        self.student_loss_start_epoch = check_count("student_loss_start_epoch", student_loss_start_epoch)
        self.distillation_losses = distillation_losses
        self.distillation_loss_weights = [weights[f"weight of {name}"] for name in names]
        self.loss_names = names
        teacher_taps = [key for loss in distillation_losses for key in loss.teacher_keys if key != LOGITS]
        self.teacher_view = tap_model(teacher_logits, teacher_taps) if teacher_taps else teacher_logits
        teacher_shapes = output_shapes(self.teacher_view if teacher_taps else None, teacher_logits, num_classes)
        student_shapes = output_shapes(self.student_view, self.student_logits, num_classes)
        for name, loss in zip(names, distillation_losses, strict=True):
            self.bind_loss(name, loss, teacher_shapes, student_shapes)
        self.mark_built()

    def frozen_teachers(self) -> list[keras.Model]:
        return [self.teacher_view]

    @property
    def needs_sample_index(self) -> bool:
        return any(loss.needs_sample_index for loss in self.distillation_losses)

    def idle_terms_at(self, epoch: int) -> frozenset:
        return frozenset(name for name, loss in zip(self.loss_names, self.distillation_losses, strict=True)
                         if loss.is_over(epoch))

    def compute_terms(self, x, y, student_outputs, training):
        idle = self.idle_terms
        needed = any(name not in idle for name in self.loss_names)
        (teacher,) = self.teacher_pass(x) if needed else ({},)
        student_loss = cross_entropy(y, student_outputs[LOGITS])
        if self.student_loss_start_epoch:
            student_loss = in_window(student_loss, self.epoch, self.student_loss_start_epoch)
        terms = [LossTerm("student_loss", self.student_loss_weight, student_loss)]
        for name, loss, weight in zip(self.loss_names, self.distillation_losses, self.distillation_loss_weights,
                                      strict=True):
            if name in idle:
                value = ops.zeros((), "float32")
            else:
                value = self.loss_value(name, loss, teacher, student_outputs, y, training, inputs=x)
            terms.append(LossTerm(name, weight, value))
        return terms

    def get_config(self) -> dict:
        return {
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "student": keras.saving.serialize_keras_object(self.student),
            "distillation_losses": [keras.saving.serialize_keras_object(loss) for loss in self.distillation_losses],
            "distillation_loss_weights": self.distillation_loss_weights,
            "student_loss_weight": self.student_loss_weight,
            **({"student_loss_start_epoch": self.student_loss_start_epoch} if self.student_loss_start_epoch else {}),
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        return cls(**deserialize_entries(config, ("student", "teacher", "distillation_losses")))
