"""Student-Friendly Teacher Networks (SFTN): train a teacher with student branches.

Park, Cha, Jeong, Kim, Han, "Learning Student-Friendly Teacher Networks for
Knowledge Distillation", NeurIPS 2021 (arXiv:2102.07650).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from keras_kd.adapters import HintRegressor
from keras_kd.checks import check_count, check_flag, check_positive
from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
    reject_positional,
)
from keras_kd.distillers.checks import check_teacher_student
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.models.blocks import split
from keras_kd.taps import LOGITS

#: Where zoo models are cut for SFTN: blocks input->stage1, stage1->stage2, stage2->logits.
SFTN_BOUNDARIES = ("stage1", "stage2")

TERM_NAMES = ("teacher_loss", "branch_kl_loss", "branch_ce_loss")


def branch_key(index: int) -> str:
    """Key of the `index`-th student branch (1-based) in the trainer's outputs dict."""
    return f"branch{index}"


def _check_boundaries(teacher_boundaries: Sequence[str], student_boundaries: Sequence[str]):
    for role, boundaries in (("teacher", teacher_boundaries), ("student", student_boundaries)):
        if isinstance(boundaries, str) or not all(isinstance(name, str) for name in boundaries):
            raise TypeError(f"`{role}_boundaries` must be a sequence of layer names, got {boundaries!r}.")
    teacher_boundaries, student_boundaries = tuple(teacher_boundaries), tuple(student_boundaries)
    if not teacher_boundaries:
        raise ValueError("SFTN needs at least one block boundary (N >= 2 blocks), got none.")
    if len(teacher_boundaries) != len(student_boundaries):
        raise ValueError(
            f"`teacher_boundaries` {list(teacher_boundaries)} and `student_boundaries` "
            f"{list(student_boundaries)} must have the same length: teacher and student are cut "
            "into the same number of blocks."
        )
    return teacher_boundaries, student_boundaries


def _rename(blocks: list[keras.Model], prefix: str) -> list[keras.Model]:
    # Teacher and student may share a name (e.g. two "resnet8"); the network's
    # top-level operations must have unique names.
    for number, block in enumerate(blocks, start=1):
        block.name = f"{prefix}{number}"
    return blocks


class _TeacherWarmup(keras.callbacks.Callback):
    """Freezes the teacher during the first `epochs` epochs (the optimizer was
    built with every variable, so unfreezing needs no new slots) and retraces
    the train step whenever the trainable set changes."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        teacher = self.model.teacher
        frozen = epoch < self.epochs
        optimizer = self.model.optimizer
        if not optimizer.built:  # without a strategy Keras builds it at the first trace
            with self.model.distribute_strategy.scope():
                optimizer.build(self.model.trainable_variables)
        if teacher.trainable == frozen:
            teacher.trainable = not frozen
            self.model.make_train_function(force=True)

    def on_train_end(self, logs=None):
        self.model.teacher.trainable = True


@keras.saving.register_keras_serializable(package="keras_kd")
class SFTNTrainer(BaseDistiller):
    """Trains a student-friendly teacher (SFTN, stage 1 of SFTN distillation).

    Teacher and student are cut into `N` blocks at the layers
    `teacher_boundaries` / `student_boundaries` (`N - 1` names each; zoo
    models: `("stage1", "stage2")`, `N = 3`). For each `i < N` a transform
    `T_i` (conv + BN + ReLU, `keras_kd.adapters.HintRegressor`) maps the
    teacher's block-`i` output to the shape of the student's block-`i`
    output and feeds a student branch running student blocks `i+1..N`:
    `z_R^i = head_S(B_S^N(...B_S^{i+1}(T_i(F_T^i))))`. The loss is

        lambda_t * CE(y, z_T)
        + lambda_kl / (N-1) * sum_i tau^2 * KL(p^tau(z_T) || p^tau(z_R^i))
        + lambda_ce / (N-1) * sum_i CE(y, z_R^i)

    and its gradients reach the teacher through every term, the KL term
    included (it is the library's `SoftTargetLoss`, given the teacher logits
    WITHOUT `stop_gradient`) (Park, Cha,
    Jeong, Kim, Han, "Learning Student-Friendly Teacher Networks for
    Knowledge Distillation", NeurIPS 2021). Teacher, transforms and student
    branch blocks are all trained. Afterwards `trainer.teacher` is the plain
    teacher (the very model passed in, now with the trained weights; no
    branch or transform), to be saved and distilled into a fresh student.

    `student` only donates its architecture: its blocks `2..N` (shared by all
    branches, or one copy per branch with `share_student_blocks=False`) are
    trained as branches, so it is not a useful student afterwards. Pass a
    trained teacher to fine-tune it, a fresh model to train from scratch.

    `call()` returns the teacher's logits (`predict`/`evaluate` act on the
    teacher); `call(x, features=True)` returns
    `{"logits": z_T, "branch1": z_R^1, ..., "branch{N-1}": z_R^{N-1}}`.

    Metrics: `loss`, `teacher_loss` (`L_T`), `branch_kl_loss` (`L_R^KL`),
    `branch_ce_loss` (`L_R^CE`), all unweighted except `loss`; `accuracy`
    (teacher top-1) and `branch{i}_accuracy` for each branch.

    Args:
        teacher: Functional model to train, images -> logits.
        student: Functional model whose later blocks form the branches;
            same input shape and classes as the teacher.
        teacher_boundaries: layer names where the teacher is cut.
        student_boundaries: layer names where the student is cut (same count).
        lambda_t: weight of the teacher's cross-entropy.
        lambda_kl: weight of the teacher-branch KL term. Default 1, where
            the paper uses 3: on the standard protocol (a ResNet20 teacher
            trained from scratch for ResNet8 students, Fashion-MNIST 10%)
            lambda_KL = 1 / 3 / 10 gave teachers of 90.44 / 89.98 / 87.64%
            test and KD students of 91.17 / 90.78 / 88.07% validation
            accuracy: the KL term holds the teacher at its branches' level
            the more, the larger it is (docs/results.md).
        lambda_ce: weight of the branches' cross-entropy.
        temperature: softmax temperature `tau` of the KL term (> 0).
        logit_standardization: z-score every network's logits per sample before
            the temperature of the KL term (Sun et al., CVPR 2024; `SoftTargetLoss`).
        warmup_epochs: the first `warmup_epochs` epochs train only the
            transforms and the student branches, with the teacher frozen
            (no update, no weight decay, inference-mode BatchNorm); then all
            train jointly. Randomly initialised branches otherwise pull a
            trained teacher down at the start of fine-tuning.
        share_student_blocks: one set of student blocks for all branches
            (default) or an independent copy per branch.

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> teacher = models.get("resnet8", (28, 28, 1), 10)
    >>> trainer = SFTNTrainer(teacher=teacher, student=models.get("cnn", (28, 28, 1), 10))
    >>> trainer.compile(optimizer="sgd")
    >>> x = np.random.rand(8, 28, 28, 1).astype("float32")
    >>> history = trainer.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    >>> sorted(history.history)  # doctest: +NORMALIZE_WHITESPACE
    ['accuracy', 'branch1_accuracy', 'branch2_accuracy', 'branch_ce_loss',
     'branch_kl_loss', 'loss', 'teacher_loss']
    >>> trainer.teacher is teacher
    True
    """

    def __init__(
        self,
        *args,
        teacher: keras.Model | None = None,
        student: keras.Model | None = None,
        teacher_boundaries: Sequence[str] = SFTN_BOUNDARIES,
        student_boundaries: Sequence[str] = SFTN_BOUNDARIES,
        lambda_t: float = 1.0,
        lambda_kl: float = 1.0,
        lambda_ce: float = 1.0,
        temperature: float = 1.0,
        logit_standardization: bool = False,
        share_student_blocks: bool = True,
        warmup_epochs: int = 0,
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("SFTNTrainer", args, "teacher=..., student=...")
        if teacher is None or student is None:
            raise TypeError("SFTNTrainer needs both `teacher=` and `student=`.")
        input_shape, num_classes = check_teacher_student(teacher, student)
        if not teacher.trainable:
            raise ValueError(
                f"The teacher {teacher.name!r} is frozen (trainable=False, e.g. taken from a distiller), "
                "but SFTN trains the teacher. Set `teacher.trainable = True` first."
            )
        teacher_boundaries, student_boundaries = _check_boundaries(teacher_boundaries, student_boundaries)
        weights = check_weights({"lambda_t": lambda_t, "lambda_kl": lambda_kl, "lambda_ce": lambda_ce})
        temperature = check_positive("temperature", temperature)
        num_branches = len(teacher_boundaries)
        teacher_blocks = _rename(split(teacher, teacher_boundaries), "teacher_block")
        student_blocks = split(student, student_boundaries)
        if share_student_blocks:
            branch_blocks = [_rename(student_blocks, "student_block")] * num_branches
        else:
            branch_blocks = [
                _rename(
                    split(keras.models.clone_model(student), student_boundaries),
                    f"branch{i}_student_block",
                )
                for i in range(1, num_branches + 1)
            ]
        transforms = []
        for i in range(1, num_branches + 1):
            teacher_map = tuple(teacher_blocks[i - 1].outputs[0].shape)
            student_map = tuple(student_blocks[i - 1].outputs[0].shape)
            transform = HintRegressor(student_map[1:], activation="relu", name=f"transform{i}")
            try:
                transform.build(teacher_map)
            except ValueError as error:
                raise ValueError(
                    f"Cannot map the teacher's block-{i} output {teacher_map[1:]} (at "
                    f"{teacher_boundaries[i - 1]!r}) onto the student's {student_map[1:]} (at "
                    f"{student_boundaries[i - 1]!r}): {error}"
                ) from error
            transforms.append(transform)
        network = self._build_network(input_shape, teacher_blocks, transforms, branch_blocks, teacher.name)
        kwargs.setdefault("name", f"{teacher.name}_sftn")
        super().__init__(
            student=network,
            num_classes=num_classes,
            term_names=TERM_NAMES,
            check_finite=check_finite,
            check_labels=check_labels,
            accuracy_outputs=[branch_key(i) for i in range(1, num_branches + 1)],
            **kwargs,
        )
        # Not tracked: the teacher's variables are the network's, and the
        # student's first block is unused (no gradient, no optimizer slot).
        object.__setattr__(self, "_teacher_model", teacher)
        object.__setattr__(self, "_student_donor", student)
        self.transforms = transforms
        self.teacher_boundaries = teacher_boundaries
        self.student_boundaries = student_boundaries
        self.num_branches = num_branches
        self.lambda_t = weights["lambda_t"]
        self.lambda_kl = weights["lambda_kl"]
        self.lambda_ce = weights["lambda_ce"]
        self.temperature = temperature
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        self.branch_kl = [
            SoftTargetLoss(temperature, logit_standardization=self.logit_standardization,
                           student_layer_name=branch_key(i))
            for i in range(1, num_branches + 1)
        ]
        self.share_student_blocks = check_flag("share_student_blocks", share_student_blocks)
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs)
        self.mark_built()

    @staticmethod
    def _build_network(input_shape, teacher_blocks, transforms, branch_blocks, name) -> keras.Model:
        """images -> {"logits": z_T, "branch1": z_R^1, ...} in one Functional model."""
        inputs = keras.Input(shape=input_shape, name="image")
        teacher_maps, x = [], inputs
        for block in teacher_blocks:
            x = block(x)
            teacher_maps.append(x)
        outputs = {LOGITS: x}
        for i, (transform, blocks) in enumerate(zip(transforms, branch_blocks, strict=True), start=1):
            z = transform(teacher_maps[i - 1])
            for block in blocks[i:]:
                z = block(z)
            outputs[branch_key(i)] = z
        return keras.Model(inputs, outputs, name=f"{name}_with_branches")

    @property
    def teacher(self) -> keras.Model:
        """The plain teacher (the model passed in): no branches, trained weights."""
        return self._teacher_model

    def deployable(self) -> keras.Model:
        """The trained teacher (SFTN's product; branches and transforms dropped)."""
        return self.teacher

    def deliverables(self) -> dict:
        return {"model": self.teacher}

    def training_callbacks(self) -> list:
        callbacks = super().training_callbacks()
        if self.warmup_epochs:
            callbacks.append(_TeacherWarmup(self.warmup_epochs))
        return callbacks

    def projector_taps(self) -> list:
        return [("projector", self.teacher, ["embedding"])]

    def call(self, inputs, training=None, features=False):
        """Teacher logits; with `features=True`, the dict of teacher and branch logits."""
        if features:
            return self.student(inputs, training=training)
        return self._teacher_model(inputs, training=training)

    def compute_terms(self, x, y, student_outputs, training):
        teacher_logits = student_outputs[LOGITS]
        branches = [student_outputs[branch_key(i)] for i in range(1, self.num_branches + 1)]
        # No stop_gradient on the teacher side: SFTN trains the teacher through this term.
        kl = ops.mean(
            ops.stack([self.loss_value("branch_kl_loss", loss, student_outputs, student_outputs, y, training)
                       for loss in self.branch_kl])
        )
        ce = ops.mean(ops.stack([cross_entropy(y, z) for z in branches]))
        return [
            LossTerm("teacher_loss", self.lambda_t, cross_entropy(y, teacher_logits)),
            LossTerm("branch_kl_loss", self.lambda_kl, kl),
            LossTerm("branch_ce_loss", self.lambda_ce, ce),
        ]

    def get_config(self) -> dict:
        return {
            "teacher": keras.saving.serialize_keras_object(self._teacher_model),  # keyword order as __init__
            "student": keras.saving.serialize_keras_object(self._student_donor),
            "teacher_boundaries": list(self.teacher_boundaries),
            "student_boundaries": list(self.student_boundaries),
            "lambda_t": self.lambda_t,
            "lambda_kl": self.lambda_kl,
            "lambda_ce": self.lambda_ce,
            "temperature": self.temperature,
            "logit_standardization": self.logit_standardization,
            "share_student_blocks": self.share_student_blocks,
            "warmup_epochs": self.warmup_epochs,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> SFTNTrainer:
        return cls(**deserialize_entries(config, ("teacher", "student")))
