"""Any plain Keras loss between a teacher and a student output."""

from __future__ import annotations

import keras
from keras import ops

from keras_kd.losses.base import DistillationLoss, LossContext, describe
from keras_kd.registry import register_loss


@register_loss("feature")
class FeatureLoss(DistillationLoss):
    """A Keras loss (by name or object) between two outputs of the same shape.

    The counterpart of `keras.distillation.FeatureDistillation`: `loss` is
    anything `keras.losses.get` accepts (`"mse"`, `"mae"`,
    `"cosine_similarity"`, `"kl_divergence"`, `"huber"`, a `keras.losses.Loss`),
    called as `loss(y_true=teacher, y_pred=student)` and averaged over the
    batch. `"kl_divergence"` expects probabilities, as in Keras. Shapes must
    agree; for maps of different shapes use `HintLoss` (trainable regressor).

    Example:

    >>> import numpy as np
    >>> t = np.ones((2, 4, 4, 3), "float32")
    >>> float(FeatureLoss("mse")(t, np.zeros_like(t)))
    1.0
    >>> round(float(FeatureLoss("cosine_similarity")(t, 2 * t)), 4)  # Keras: -cos
    -1.0
    """

    metric_name = "feature_loss"

    def __init__(self, loss: str | keras.losses.Loss = "mse", **kwargs):
        super().__init__(**kwargs)
        function = keras.losses.get(loss)
        if function is None:
            raise ValueError(f"`loss` must name a Keras loss or be one, got {loss!r}.")
        self.loss = loss
        self.function = function

    def check_shapes(self, teacher_shape, student_shape):
        if tuple(teacher_shape[1:]) != tuple(student_shape[1:]):
            raise ValueError(
                f"{self.loss!r} needs outputs of the same shape; got teacher {describe(teacher_shape)} and "
                f"student {describe(student_shape)}. Use HintLoss for a trainable regressor."
            )

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        return ops.mean(self.function(teacher_output, student_output))

    def get_config(self) -> dict:
        loss = self.loss if isinstance(self.loss, str) else keras.saving.serialize_keras_object(self.loss)
        return {**super().get_config(), "loss": loss}

    @classmethod
    def from_config(cls, config: dict) -> FeatureLoss:
        config = dict(config)
        if isinstance(config.get("loss"), dict):
            config["loss"] = keras.saving.deserialize_keras_object(config["loss"])
        return cls(**config)
