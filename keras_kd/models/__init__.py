"""Model zoo with uniform feature taps, and size (params / FLOPs) reporting."""

from keras_kd.models.blocks import chain, split
from keras_kd.models.multibranch import BranchEnsemble, extract_branch, multibranch, num_branches_of
from keras_kd.models.online import extract_student, online_ensemble
from keras_kd.models.summary import ModelSummary, count_macs, count_params, summarize
from keras_kd.models.zoo import FEATURE_TAPS, ZOO_NAMES, available, get, synchronize_batchnorm

__all__ = [
    "BranchEnsemble",
    "FEATURE_TAPS",
    "ZOO_NAMES",
    "ModelSummary",
    "available",
    "chain",
    "count_macs",
    "count_params",
    "extract_branch",
    "extract_student",
    "get",
    "multibranch",
    "online_ensemble",
    "num_branches_of",
    "split",
    "summarize",
    "synchronize_batchnorm",
]
