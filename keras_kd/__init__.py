"""keras-kd: knowledge distillation for Keras 3, inside `model.fit`.

Public API: `Distiller` (Hinton KD + any registered losses),
`EnsembleDistiller` (EKD), `SFTNTrainer` (student-friendly teachers),
`OnlineEnsembleDistiller` (OEMC), `DMLTrainer` (deep mutual learning),
`ONETrainer` (on-the-fly native ensemble),
`Supervised` (plain training),
`keras_kd.losses` (one contract, registered by name), `keras_kd.registry`,
`keras_kd.models` (zoo with feature taps, multi-branch
and online-ensemble builders, params/FLOPs), `keras_kd.data` (datasets,
teacher-output cache).
"""

from keras_kd import data, losses, models, registry
from keras_kd.distillers import (
    BaseDistiller,
    Distiller,
    DMLTrainer,
    EnsembleDistiller,
    LossTerm,
    ONETrainer,
    OnlineEnsembleDistiller,
    SFTNTrainer,
    Supervised,
)
from keras_kd.distillers.base import LabelRangeError, NonFiniteLossError, TrainingError
from keras_kd.taps import tap_model

__version__ = "0.3.0"

__all__ = [
    "BaseDistiller",
    "DMLTrainer",
    "Distiller",
    "EnsembleDistiller",
    "LabelRangeError",
    "NonFiniteLossError",
    "LossTerm",
    "ONETrainer",
    "OnlineEnsembleDistiller",
    "SFTNTrainer",
    "Supervised",
    "TrainingError",
    "data",
    "losses",
    "models",
    "registry",
    "tap_model",
]
