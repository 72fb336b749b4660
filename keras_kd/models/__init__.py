"""Model zoo with uniform feature taps, keras.applications / KerasHub backbones,
multi-branch builders, and size (params / FLOPs) reporting."""

from keras_kd.models.applications import application, stable_layer_names
from keras_kd.models.blocks import chain, split
from keras_kd.models.multibranch import BranchEnsemble, extract_branch, multibranch, num_branches_of
from keras_kd.models.native_ensemble import branch_model, native_ensemble
from keras_kd.models.online import extract_student, online_ensemble
from keras_kd.models.summary import ModelSummary, count_macs, count_params, summarize
from keras_kd.models.zoo import FEATURE_TAPS, ZOO_NAMES, available, get, synchronize_batchnorm

__all__ = [
    "BranchEnsemble",
    "FEATURE_TAPS",
    "ZOO_NAMES",
    "ModelSummary",
    "application",
    "available",
    "branch_model",
    "chain",
    "count_macs",
    "count_params",
    "extract_branch",
    "extract_student",
    "get",
    "multibranch",
    "native_ensemble",
    "online_ensemble",
    "num_branches_of",
    "split",
    "stable_layer_names",
    "summarize",
    "synchronize_batchnorm",
]
