"""keras-kd: knowledge distillation for Keras 3, inside `model.fit`.

Public API: `Distiller` (Hinton KD + feature terms, `FeatureTerm`),
`EnsembleDistiller` (EKD), `SFTNTrainer` (student-friendly teachers),
`OnlineEnsembleDistiller` (OEMC), `Supervised` (plain training),
`keras_kd.losses`, `keras_kd.models` (zoo with feature taps, multi-branch
and online-ensemble builders, params/FLOPs), `keras_kd.data` (datasets,
teacher-output cache).
"""

from keras_kd import data, losses, models
from keras_kd.distillers import (
    BaseDistiller,
    Distiller,
    EnsembleDistiller,
    LossTerm,
    OnlineEnsembleDistiller,
    SFTNTrainer,
    Supervised,
)
from keras_kd.taps import tap_model

__version__ = "0.2.0"

__all__ = [
    "BaseDistiller",
    "Distiller",
    "EnsembleDistiller",
    "LossTerm",
    "OnlineEnsembleDistiller",
    "SFTNTrainer",
    "Supervised",
    "data",
    "losses",
    "models",
    "tap_model",
]
