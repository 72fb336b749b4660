"""Feature terms: (teacher tap, student tap, loss, weight) for feature distillation."""

from __future__ import annotations

import keras

from keras_kd.distillers.base import deserialize_entries
from keras_kd.losses.base import DistillationLoss, check_non_negative


@keras.saving.register_keras_serializable(package="keras_kd")
class FeatureTerm:
    """One feature-distillation term of a `Distiller`.

    Args:
        teacher_tap: layer name of the teacher whose output is the target
            (zoo models: `stem`, `stage1`, `stage2`, `stage3`, `embedding`).
        student_tap: layer name of the student.
        loss: a `keras_kd.losses` object, e.g. `HintLoss()`,
            `AttentionTransferLoss()`, `LocalityPreservingLoss()`.
        weight: weight of the term in the total loss (>= 0).
        name: metric name; defaults to the loss's (`hint_loss`, `at_loss`,
            `lp_loss`), suffixed with the student tap when several terms
            share it.

    Example:

    >>> from keras_kd.losses import HintLoss
    >>> FeatureTerm("stage2", "stage2", HintLoss(), weight=100.0).weight
    100.0
    """

    def __init__(
        self,
        teacher_tap: str,
        student_tap: str,
        loss: DistillationLoss,
        weight: float = 1.0,
        name: str | None = None,
    ):
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                f"FeatureTerm loss must be a keras_kd.losses.DistillationLoss, got {type(loss).__name__}."
            )
        for label, tap in (("teacher_tap", teacher_tap), ("student_tap", student_tap)):
            if not isinstance(tap, str) or not tap:
                raise ValueError(f"FeatureTerm `{label}` must be a layer name, got {tap!r}.")
        self.teacher_tap = teacher_tap
        self.student_tap = student_tap
        self.loss = loss
        self.weight = check_non_negative("weight", weight)
        self.name = name

    @property
    def needs_adapter(self) -> bool:
        return bool(getattr(self.loss, "needs_adapter", False))

    def get_config(self) -> dict:
        return {
            "teacher_tap": self.teacher_tap,
            "student_tap": self.student_tap,
            "loss": keras.saving.serialize_keras_object(self.loss),
            "weight": self.weight,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> FeatureTerm:
        return cls(**deserialize_entries(config, ("loss",)))

    def __repr__(self) -> str:
        return (
            f"FeatureTerm({self.teacher_tap!r} -> {self.student_tap!r}, {self.loss!r}, "
            f"weight={self.weight})"
        )


def term_names(features: list[FeatureTerm]) -> list[str]:
    """Unique metric names for `features`, in order."""
    defaults = [term.name or term.loss.metric_name for term in features]
    names = []
    for term, default in zip(features, defaults, strict=True):
        name = default
        if term.name is None and defaults.count(default) > 1:
            name = f"{default}_{term.student_tap}"
        if name in names:
            raise ValueError(f"Two feature terms share the metric name {name!r}; give them `name=`.")
        names.append(name)
    return names
