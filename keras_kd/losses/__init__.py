"""Distillation losses: small pure objects called as `loss(teacher, student)`."""

from keras_kd.losses.attention import AttentionTransferLoss
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.embedding import EmbeddingMimicryLoss
from keras_kd.losses.hint import HintLoss
from keras_kd.losses.locality import LocalityPreservingLoss
from keras_kd.losses.soft_target import SoftTargetLoss

#: Losses addressable by short name (YAML configs, `get`).
REGISTRY = {
    "kd": SoftTargetLoss,
    "hint": HintLoss,
    "at": AttentionTransferLoss,
    "lp": LocalityPreservingLoss,
    "embedding": EmbeddingMimicryLoss,
}


def get(name: str, **kwargs) -> DistillationLoss:
    """A loss by short name (`kd`, `hint`, `at`, `lp`, `embedding`) with keyword arguments.

    >>> get("lp", k=3).k
    3
    """
    if name not in REGISTRY:
        raise ValueError(f"Unknown loss {name!r}. Available: {', '.join(REGISTRY)}.")
    try:
        return REGISTRY[name](**kwargs)
    except TypeError as error:
        raise ValueError(f"Bad arguments for loss {name!r} ({REGISTRY[name].__name__}): {error}") from error


__all__ = [
    "REGISTRY",
    "get",
    "AttentionTransferLoss",
    "DistillationLoss",
    "EmbeddingMimicryLoss",
    "HintLoss",
    "LocalityPreservingLoss",
    "SoftTargetLoss",
]
