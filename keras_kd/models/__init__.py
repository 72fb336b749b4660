"""Model zoo with uniform feature taps, and size (params / FLOPs) reporting."""

from keras_kd.models.summary import ModelSummary, count_macs, count_params, summarize
from keras_kd.models.zoo import FEATURE_TAPS, ZOO_NAMES, available, get, synchronize_batchnorm

__all__ = [
    "FEATURE_TAPS",
    "ZOO_NAMES",
    "ModelSummary",
    "available",
    "count_macs",
    "count_params",
    "get",
    "summarize",
    "synchronize_batchnorm",
]
