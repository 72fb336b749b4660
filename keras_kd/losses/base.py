"""Base class shared by every keras_kd loss."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


class DistillationLoss:
    """A pure, parameter-free loss called as `loss(teacher_output, student_output)`.

    Subclasses implement `call(teacher_output, student_output)` and return a
    scalar float32 tensor that is already averaged over the batch. The loss
    never scales itself for `tf.distribute`: distillers divide the weighted
    total once by the number of replicas, so values reported to metrics are
    the plain per-batch means.

    Teacher values are wrapped in `stop_gradient`, so a loss never pushes a
    gradient into the teacher even if the caller forgets to.
    """

    #: Name used for the metric that reports this term (e.g. `"kd_loss"`).
    metric_name = "distillation_loss"

    def __call__(self, teacher_output: Any, student_output: Any) -> Any:
        teacher_output = keras.tree.map_structure(
            lambda t: ops.stop_gradient(ops.cast(t, "float32")), teacher_output
        )
        student_output = keras.tree.map_structure(
            lambda s: ops.cast(s, "float32"), student_output
        )
        return self.call(teacher_output, student_output)

    def call(self, teacher_output: Any, student_output: Any) -> Any:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config: dict) -> DistillationLoss:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


def check_positive(name: str, value: float) -> float:
    """Returns `value` as a float, raising a clear error unless it is > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not value > 0:
        raise ValueError(f"`{name}` must be > 0, got {value!r}.")
    return float(value)


def check_non_negative(name: str, value: float) -> float:
    """Returns `value` as a float, raising a clear error unless it is >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    if not value >= 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    return float(value)
