"""Plain cross-entropy training through the distillers' machinery."""

from __future__ import annotations

import keras

from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    cross_entropy,
    deserialize_entries,
    reject_positional,
)
from keras_kd.distillers.checks import model_io


@keras.saving.register_keras_serializable(package="keras_kd")
class Supervised(BaseDistiller):
    """Trains `model` with cross-entropy only: teachers and baseline students.

    Same metrics, label and non-finite checks, loss scaling and
    MultiWorkerMirroredStrategy support as the distillers, so a teacher and
    its students are trained by one code path.

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> trainer = Supervised(model=models.get("cnn", (28, 28, 1), 10))
    >>> trainer.compile(optimizer="adam")
    >>> x, y = np.zeros((4, 28, 28, 1), "float32"), np.arange(4)
    >>> sorted(trainer.fit(x, y, verbose=0).history)
    ['accuracy', 'ce_loss', 'loss']
    """

    trained_role = "model"

    def __init__(
        self,
        *args,
        model: keras.Model | None = None,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("Supervised", args, "model=...")
        if model is None:
            raise TypeError("Supervised needs `model=`.")
        _, num_classes = model_io(model, "model")
        kwargs.setdefault("name", f"{model.name}_supervised")
        super().__init__(
            student=model,
            num_classes=num_classes,
            term_names=("ce_loss",),
            check_finite=check_finite,
            check_labels=check_labels,
            **kwargs,
        )
        self.mark_built()

    def deliverables(self) -> dict:
        return {"model": self.student}

    def compute_terms(self, x, y, student_outputs, training):
        return [LossTerm("ce_loss", 1.0, cross_entropy(y, student_outputs["logits"]))]

    def get_config(self) -> dict:
        return {
            "model": keras.saving.serialize_keras_object(self.student),
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> Supervised:
        return cls(**deserialize_entries(config, ("model",)))
