"""FitNet hint loss (MSE after a trainable regressor owned by the distiller)."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss


@keras.saving.register_keras_serializable(package="keras_kd")
class HintLoss(DistillationLoss):
    """`mean((r(v) - u)^2)`: FitNet hints (Romero et al., ICLR 2015).

    `u` is the teacher's hint map, `v` the student's guided map and `r` a
    trainable `keras_kd.adapters.HintRegressor` that the distiller creates
    (from `build_adapter`), trains with the student and saves with itself;
    the exported student never contains it. Called directly, the loss
    expects `student_output` already regressed to the teacher's shape.

    Example:

    >>> import numpy as np
    >>> u = np.ones((2, 4, 4, 8), "float32")
    >>> float(HintLoss()(u, np.zeros_like(u)))
    1.0
    """

    metric_name = "hint_loss"
    needs_adapter = True

    def __init__(self, regressor_activation: str | None = "relu"):
        self.regressor_activation = regressor_activation

    def build_adapter(self, student_shape, teacher_shape, name: str):
        from keras_kd.adapters import HintRegressor

        return HintRegressor(teacher_shape[1:], activation=self.regressor_activation, name=name)

    def call(self, teacher_features, student_features):
        if tuple(teacher_features.shape[1:]) != tuple(student_features.shape[1:]):
            raise ValueError(
                f"HintLoss needs the regressed student features {tuple(student_features.shape[1:])} "
                f"to match the teacher features {tuple(teacher_features.shape[1:])}."
            )
        return ops.mean(ops.square(student_features - teacher_features))

    def get_config(self) -> dict:
        return {"regressor_activation": self.regressor_activation}
