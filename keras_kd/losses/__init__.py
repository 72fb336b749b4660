"""Distillation losses: one contract (`DistillationLoss`), one registry.

Every module of this package is imported on first use of the registry, and
every registered loss is reachable by name (`get("kd", temperature=4.0)`), in
YAML configs and in the results suite.
"""

from keras_kd.losses.attention import AttentionTransferLoss
from keras_kd.losses.base import LOGITS, DistillationLoss, LossContext
from keras_kd.losses.embedding import EmbeddingMimicryLoss
from keras_kd.losses.feature import FeatureLoss
from keras_kd.losses.hint import HintLoss
from keras_kd.losses.locality import LocalityPreservingLoss
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.registry import loss_class, loss_names


def __getattr__(name: str):
    """Every registered loss class by its class name (`losses.DISTLoss`), also
    those added as new files of this package without editing this one."""
    for registered in loss_names():
        cls = loss_class(registered)
        if cls.__name__ == name:
            return cls
    raise AttributeError(f"module 'keras_kd.losses' has no attribute {name!r}")


def get(name: str, /, **kwargs) -> DistillationLoss:
    """A registered loss by name with keyword arguments (`name=` among them
    is the loss's metric name).

    >>> get("lp", k=3, teacher_layer_name="embedding", student_layer_name="embedding").k
    3
    """
    cls = loss_class(name)
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"Bad arguments for loss {name!r} ({cls.__name__}): {error}") from error


__all__ = [
    "LOGITS",
    "AttentionTransferLoss",
    "DistillationLoss",
    "EmbeddingMimicryLoss",
    "FeatureLoss",
    "HintLoss",
    "LocalityPreservingLoss",
    "LossContext",
    "SoftTargetLoss",
    "get",
    "loss_names",
]
