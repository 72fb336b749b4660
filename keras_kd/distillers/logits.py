"""Logit (Hinton KD) and feature distillation from a frozen teacher, in one pass."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
)
from keras_kd.distillers.checks import check_teacher_student, freeze
from keras_kd.distillers.features import FeatureTerm, term_names
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.taps import LOGITS, tap_model


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(BaseDistiller):
    """Knowledge distillation from a frozen teacher, inside `model.fit`.

    Loss: `ce_weight * CE(y, z_s) + alpha * T^2 * KL(p^T(z_t) || p^T(z_s))
    + sum_i weight_i * feature_loss_i(teacher_tap_i, student_tap_i)`, with
    `ce_weight = 1 - alpha` unless given (Hinton, Vinyals, Dean, "Distilling
    the Knowledge in a Neural Network", 2015). Feature terms (FitNet hints,
    attention transfer, locality-preserving loss, ...) read named layers of
    the teacher and the student from the SAME forward pass that produces the
    logits: each network runs exactly once per step, whatever the number of
    terms (unlike `keras.distillation.Distiller`, which runs the student
    twice). Trainable adapters a loss needs (the FitNet regressor) are
    created here, trained with the student and saved with the distiller,
    never added to the student.

    The teacher runs with `training=False` and no gradient, so its weights
    and BatchNorm statistics never change. `call()` returns the student's
    logits: `predict`, `evaluate` and `export` act on the student.

    Metrics: `loss` (weighted total), `student_loss` (CE),
    `distillation_loss` (soft-target term, unweighted), one per feature term
    (`hint_loss`, `at_loss`, `lp_loss`, ...) and `accuracy` (student top-1),
    every step and epoch, in History and TensorBoard.

    Args:
        student: model to train; returns logits.
        teacher: trained model returning logits for the same classes.
        temperature: softmax temperature `T` (> 0).
        alpha: weight of the soft-target term.
        ce_weight: weight of the hard-label cross-entropy; `None` = `1 - alpha`.
        distillation_loss: a `keras_kd.losses` object called as
            `loss(teacher_logits, student_logits)`; default
            `SoftTargetLoss(temperature)`.
        features: `keras_kd.FeatureTerm`s. Taps are layer names, so the
            models must be Functional/Sequential when features are used
            (logit distillation works with any model).

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
        features: list[FeatureTerm] | None = None,
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
        features = list(features or [])
        for term in features:
            if not isinstance(term, FeatureTerm):
                raise TypeError(f"`features` must hold keras_kd.FeatureTerm objects, got {term!r}.")
        feature_names = term_names(features)
        weights = check_weights(
            {
                "alpha": alpha,
                "ce_weight": 1.0 - alpha if ce_weight is None else ce_weight,
                **{f"weight of {name}": term.weight for name, term in zip(feature_names, features, strict=True)},
            }
        )
        kwargs.setdefault("name", "distiller")
        super().__init__(
            student,
            num_classes,
            term_names=("student_loss", "distillation_loss", *feature_names),
            student_taps=[term.student_tap for term in features],
            check_finite=check_finite,
            check_labels=check_labels,
            **kwargs,
        )
        self.teacher = freeze(teacher)
        self.temperature = float(getattr(distillation_loss, "temperature", temperature))
        self.alpha = weights["alpha"]
        self.ce_weight = weights["ce_weight"]
        self.distillation_loss = distillation_loss
        self.features = features
        self.feature_names = feature_names
        self.teacher_view = (
            tap_model(teacher, [term.teacher_tap for term in features]) if features else None
        )
        self.adapters = self._build_adapters()
        self.mark_built()

    def _build_adapters(self) -> dict:
        adapters = {}
        for name, term in zip(self.feature_names, self.features, strict=True):
            if term.needs_adapter:
                student_shape = tuple(self.student_view.output[term.student_tap].shape)
                teacher_shape = tuple(self.teacher_view.output[term.teacher_tap].shape)
                adapter = term.loss.build_adapter(student_shape, teacher_shape, name=f"adapter_{name}")
                if adapter is not None:  # None: shapes already agree
                    adapter.build(student_shape)
                    adapters[name] = adapter
        return adapters

    def teacher_outputs(self, x) -> dict:
        """Teacher logits and feature taps from one inference-mode pass, no gradient."""
        if self.teacher_view is None:
            outputs = {LOGITS: self.teacher(x, training=False)}
        else:
            outputs = self.teacher_view(x, training=False)
        return {key: ops.stop_gradient(value) for key, value in outputs.items()}

    def compute_terms(self, x, y, student_outputs, training):
        student_logits = student_outputs[LOGITS]
        teacher = self.teacher_outputs(x)
        terms = [
            LossTerm("student_loss", self.ce_weight, cross_entropy(y, student_logits)),
            LossTerm(
                "distillation_loss",
                self.alpha,
                self.distillation_loss(teacher[LOGITS], student_logits),
            ),
        ]
        for name, term in zip(self.feature_names, self.features, strict=True):
            student_features = student_outputs[term.student_tap]
            if name in self.adapters:
                student_features = self.adapters[name](student_features, training=training)
            value = term.loss(teacher[term.teacher_tap], student_features)
            terms.append(LossTerm(name, term.weight, value))
        return terms

    def get_config(self) -> dict:
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "ce_weight": self.ce_weight,
            "distillation_loss": keras.saving.serialize_keras_object(self.distillation_loss),
            "features": [keras.saving.serialize_keras_object(term) for term in self.features],
            "check_finite": self.check_finite,
            "check_labels": self.check_labels,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> Distiller:
        config = deserialize_entries(config, ("student", "teacher", "distillation_loss"))
        config["features"] = [
            keras.saving.deserialize_keras_object(term) for term in config.get("features") or []
        ]
        return cls(**config)
