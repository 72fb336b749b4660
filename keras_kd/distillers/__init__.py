"""Distillers: keras.Model subclasses whose train_step distills a student."""

from keras_kd.distillers.base import BaseDistiller, LossTerm
from keras_kd.distillers.ensemble import EnsembleDistiller
from keras_kd.distillers.logits import Distiller
from keras_kd.distillers.mutual import DMLTrainer
from keras_kd.distillers.native_ensemble import ONETrainer
from keras_kd.distillers.online import OnlineEnsembleDistiller
from keras_kd.distillers.sftn import SFTNTrainer
from keras_kd.distillers.supervised import Supervised

__all__ = [
    "BaseDistiller",
    "DMLTrainer",
    "Distiller",
    "EnsembleDistiller",
    "LossTerm",
    "ONETrainer",
    "OnlineEnsembleDistiller",
    "SFTNTrainer",
    "Supervised",
]
