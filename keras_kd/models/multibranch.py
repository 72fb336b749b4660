"""Multi-branch students whose output is the ensemble of their branches (EKD)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd.checks import check_count, check_flag, check_index
from keras_kd.models import zoo
from keras_kd.models.blocks import split

ENSEMBLE_MODES = ("logits", "softmax")


@keras.saving.register_keras_serializable(package="keras_kd")
class BranchEnsemble(keras.layers.Layer):
    """Combines branch logits: their mean (`"logits"`), or the log of the mean
    of their softmaxes (`"softmax"`: logits whose softmax is the averaged
    probability vector)."""

    def __init__(self, mode: str = "logits", **kwargs):
        super().__init__(**kwargs)
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"Ensemble `mode` must be one of {ENSEMBLE_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, branch_logits):
        stacked = ops.stack(list(branch_logits), axis=0)
        if self.mode == "logits":
            return ops.mean(stacked, axis=0)
        # log(mean_i softmax(z_i)) computed stably in log space.
        log_probs = ops.log_softmax(stacked, axis=-1)
        count = ops.cast(len(branch_logits), log_probs.dtype)
        return ops.logsumexp(log_probs, axis=0) - ops.log(count)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


def branch_names(num_branches: int) -> list[str]:
    """Layer names of the branch logits: `branch1`, ..., `branchN`."""
    return [f"branch{i}" for i in range(1, num_branches + 1)]


def embedding_name(branch: str) -> str:
    return f"{branch}_embedding"


def multibranch(
    arch: str = "resnet8",
    num_branches: int = 3,
    input_shape: Sequence[int] = (32, 32, 3),
    num_classes: int = 10,
    shared_stem: bool = True,
    ensemble: str = "logits",
    name: str | None = None,
) -> keras.Model:
    """A student of `num_branches` parallel `arch` branches and their ensemble.

    Asif, Tang, Harrer, "Ensemble Knowledge Distillation for Learning Improved
    and Efficient Networks", ECAI 2020. With `shared_stem=True` one
    conv-BN-ReLU stem (the zoo model's `stem` block) feeds every branch;
    otherwise each branch is a complete `arch` network (sub-models
    `branch{i}_body` and `branch{i}_head`). Feature taps (layer names):
    `branch{i}_embedding` (pooled pre-logit vector of branch i), `branch{i}`
    (its logits) and `ensemble` (the model's output: the mean of the branch
    logits, or with `ensemble="softmax"` the log of the mean of their
    softmaxes). Extract one branch with `extract_branch`.

    Example:

    >>> student = multibranch("resnet8", 3, (28, 28, 1), 10)
    >>> student.output_shape
    (None, 10)
    >>> [layer.name for layer in student.layers if layer.name.startswith("branch1")]
    ['branch1_body', 'branch1_embedding', 'branch1_head', 'branch1']
    """
    num_branches = check_count("num_branches", num_branches, minimum=1)
    if ensemble not in ENSEMBLE_MODES:
        raise ValueError(f"`ensemble` must be one of {ENSEMBLE_MODES}, got {ensemble!r}.")
    shared_stem = check_flag("shared_stem", shared_stem)
    input_shape = tuple(int(d) for d in input_shape)
    inputs = keras.Input(shape=input_shape, name="image")
    stem_output = None
    if shared_stem:
        stem = split(zoo.get(arch, input_shape, num_classes), ("stem",))[0]
        stem_output = _renamed(stem, "shared_stem")(inputs)
    logits = []
    for branch in branch_names(num_branches):
        network = zoo.get(arch, input_shape, num_classes)
        if shared_stem:
            _, body, head = split(network, ("stem", "embedding"))
            features = _renamed(body, f"{branch}_body")(stem_output)
        else:
            body, head = split(network, ("embedding",))
            features = _renamed(body, f"{branch}_body")(inputs)
        # Identity layers give the taps an output in THIS graph (a nested
        # model's `.output` is the one of its own graph).
        features = keras.layers.Identity(name=embedding_name(branch))(features)
        branch_logits = _renamed(head, f"{branch}_head")(features)
        logits.append(keras.layers.Identity(name=branch)(branch_logits))
    output = BranchEnsemble(ensemble, name="ensemble")(logits)
    default = f"{arch}_x{num_branches}{'' if shared_stem else '_independent'}"
    return keras.Model(inputs, output, name=name or default)


def _renamed(block: keras.Model, name: str) -> keras.Model:
    return keras.Model(block.inputs[0], block.outputs[0], name=name)


def num_branches_of(student: keras.Model) -> int:
    """How many `branch{i}` logits layers a multi-branch student has."""
    names = {layer.name for layer in getattr(student, "layers", [])}
    count = 0
    while f"branch{count + 1}" in names:
        count += 1
    if count == 0 or "ensemble" not in names:
        raise ValueError(
            f"Model {student.name!r} is not a keras_kd multi-branch student (no `branch1` and "
            "`ensemble` layers). Build one with keras_kd.models.multibranch()."
        )
    return count


def extract_branch(student: keras.Model, index: int, name: str | None = None) -> keras.Model:
    """Branch `index` (1-based) of a multi-branch student as a standalone
    model image -> logits, sharing its weights (save it to get a copy).

    Example:

    >>> import numpy as np
    >>> student = multibranch("resnet8", 2, (28, 28, 1), 10)
    >>> single = extract_branch(student, 2)
    >>> x = np.ones((1, 28, 28, 1), "float32")
    >>> inside = keras.Model(student.inputs[0], student.get_layer("branch2").output)(x)
    >>> bool(np.allclose(single(x), inside, atol=1e-6))
    True
    """
    count = num_branches_of(student)
    index = check_index("index", index, count, of=f"the branches of {student.name!r}")
    inputs = keras.Input(shape=tuple(student.inputs[0].shape[1:]), name="image")
    x = inputs
    names = {layer.name for layer in student.layers}
    if "shared_stem" in names:
        x = student.get_layer("shared_stem")(x)
    x = student.get_layer(f"branch{index}_body")(x)
    x = student.get_layer(f"branch{index}_head")(x)
    return keras.Model(inputs, x, name=name or f"{student.name}_branch{index}")
