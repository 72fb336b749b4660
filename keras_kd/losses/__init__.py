"""Distillation losses: small pure objects called as `loss(teacher, student)`."""

from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.soft_target import SoftTargetLoss

__all__ = ["DistillationLoss", "SoftTargetLoss"]
