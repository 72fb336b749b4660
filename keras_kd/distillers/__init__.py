"""Distillers: keras.Model subclasses whose train_step distills a student."""

from keras_kd.distillers.base import BaseDistiller, LossTerm
from keras_kd.distillers.features import FeatureTerm
from keras_kd.distillers.logits import Distiller

__all__ = ["BaseDistiller", "Distiller", "FeatureTerm", "LossTerm"]
