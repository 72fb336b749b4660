"""Ensemble Knowledge Distillation: branch i of a multi-branch student learns from teacher i."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_kd.checks import check_flag, check_positive
from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
    output_shapes,
    reject_positional,
)
from keras_kd.distillers.checks import check_teacher_student, freeze, logits_model
from keras_kd.losses.base import LOGITS
from keras_kd.losses.embedding import EmbeddingMimicryLoss
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.models.multibranch import branch_names, embedding_name, num_branches_of
from keras_kd.taps import tap_model


def per_teacher(name: str, value, count: int) -> list[float]:
    """A scalar repeated `count` times, or a list that must have `count` items."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"`{name}` has {len(value)} values but there are {count} teachers.")
        return [float(v) for v in value]
    return [value] * count


@keras.saving.register_keras_serializable(package="keras_kd")
class EnsembleDistiller(BaseDistiller):
    """Ensemble Knowledge Distillation (EKD) inside `model.fit`.

    Asif, Tang, Harrer, "Ensemble Knowledge Distillation for Learning
    Improved and Efficient Networks", ECAI 2020. The student is a
    multi-branch network (`keras_kd.models.multibranch`); branch i learns from
    its own frozen teacher i, and the branches are coupled through their
    ensemble `z_bar` (the student's output):

    ```
    L_i = ce_weight * CE(y, z_i) + alpha_i * T_i^2 * KL(p^T_i(t_i) || p^T_i(z_i))
          + beta_i * || l2n(phi_i(h_i)) - l2n(g_i) ||^2
    L   = ensemble_weight * CE(y, z_bar) + s * sum_i L_i,   s = 1/N ("mean") or 1 ("sum")
    ```

    `h_i`/`g_i` are the pooled embeddings of branch i and teacher i; `phi_i` is
    a trainable bias-free Dense adapter (`keras_kd.losses.EmbeddingMimicryLoss`
    part), created where their widths differ (`embedding_adapter="if_needed"`)
    or for every branch (`"always"`), owned by the distiller and never
    exported with the student. The soft-target and embedding terms are the
    library's `SoftTargetLoss` and `EmbeddingMimicryLoss` objects. Any term
    is switched off by a zero weight; with every `beta_i = 0` no embedding is
    read at all. Teachers may differ in architecture and size.

    Teachers run online, once per step each, or not at all when the batches
    come from a teacher-output cache (built with `build_teacher_cache`, fed
    through `keras_kd.data.load(..., teacher_cache=...)`, augmented views
    included): then inputs are dicts `{"image": x, "teacher{i}_logits": ...,
    "teacher{i}_embedding": ...}` and the step costs the same whatever the
    number of teachers. Check a cache built elsewhere with
    `check_teacher_cache` (same teachers, same order; the CLI does this itself).

    Metrics: `loss`, `ensemble_ce_loss`, `branch{i}_ce_loss`,
    `branch{i}_kd_loss`, `branch{i}_embedding_loss`, `accuracy` (ensemble)
    and `branch{i}_accuracy`.

    Args:
        teachers: trained models returning logits for the same classes.
        student: a multi-branch student with one branch per teacher.
        temperature, alpha, beta: one value for all teachers or one per teacher.
        logit_standardization: z-score every network's logits per sample before
            the temperature of the KD terms (Sun et al., CVPR 2024; `SoftTargetLoss`).
        ce_weight: weight of each branch's hard-label cross-entropy.
        ensemble_weight: weight of the cross-entropy of the ensemble output.
        embedding_layer: layer of every teacher holding its pooled embedding.
        embedding_adapter: `"always"` (default) or `"if_needed"`, see above.
        branch_weighting: `"sum"` (default, no scaling) or `"mean"` (each
            branch's terms scaled by 1/N).

    The defaults are the setting chosen on the validation split of the
    standard suite (10% of Fashion-MNIST, 3-branch ResNet8 from ResNet20,
    WRN-16-1 and CNN teachers, 120 epochs; validation accuracy of the
    ensemble): sum + always 91.82%, sum + if_needed 91.60%, mean + always
    91.53%, mean + if_needed 90.93%. The paper sums the branches' terms and
    needs no adapter where widths match (`"sum"`, `"if_needed"`).

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> teachers = [models.get(name, (28, 28, 1), 10) for name in ("resnet8", "cnn")]
    >>> student = models.multibranch("resnet8", 2, (28, 28, 1), 10)
    >>> distiller = EnsembleDistiller(teachers=teachers, student=student, temperature=4.0)
    >>> distiller.compile(optimizer="sgd")
    >>> x, y = np.random.rand(4, 28, 28, 1).astype("float32"), np.arange(4)
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> [name for name in history.history if "accuracy" in name]
    ['accuracy', 'branch1_accuracy', 'branch2_accuracy']
    """

    def __init__(
        self,
        *args,
        teachers: Sequence[keras.Model] | None = None,
        student: keras.Model | None = None,
        temperature: float | Sequence[float] = 4.0,
        alpha: float | Sequence[float] = 1.0,
        beta: float | Sequence[float] = 1.0,
        logit_standardization: bool = False,
        ce_weight: float = 1.0,
        ensemble_weight: float = 1.0,
        embedding_layer: str = "embedding",
        embedding_adapter: str = "always",
        branch_weighting: str = "sum",
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
        reject_positional("EnsembleDistiller", args, "teachers=[...], student=...")
        if not teachers or student is None:
            raise TypeError("EnsembleDistiller needs `teachers=[...]` (at least one) and `student=`.")
        if branch_weighting not in ("mean", "sum"):
            raise ValueError(f"`branch_weighting` must be 'mean' or 'sum', got {branch_weighting!r}.")
        teachers = list(teachers)
        branches = branch_names(num_branches_of(student))
        if len(teachers) != len(branches):
            raise ValueError(
                f"EnsembleDistiller needs one teacher per branch: student {student.name!r} has "
                f"{len(branches)} branches but {len(teachers)} teachers were given."
            )
        num_classes = None
        for teacher in teachers:
            _, num_classes = check_teacher_student(teacher, student)
        count = len(teachers)
        temperatures = [check_positive("temperature", t) for t in per_teacher("temperature", temperature, count)]
        alphas = per_teacher("alpha", alpha, count)
        betas = per_teacher("beta", beta, count)
        weights = check_weights(
            {
                "ce_weight": ce_weight,
                "ensemble_weight": ensemble_weight,
                **{f"alpha[{i}]": a for i, a in enumerate(alphas)},
                **{f"beta[{i}]": b for i, b in enumerate(betas)},
            }
        )
        self.uses_embeddings = any(betas)
        names = ["ensemble_ce_loss"]
        for branch in branches:
            names += [f"{branch}_ce_loss", f"{branch}_kd_loss"]
            if self.uses_embeddings:
                names.append(f"{branch}_embedding_loss")
        taps = list(branches) + ([embedding_name(b) for b in branches] if self.uses_embeddings else [])
        kwargs.setdefault("name", "ensemble_distiller")
        super().__init__(
            student=student,
            num_classes=num_classes,
            term_names=names,
            student_taps=taps,
            check_finite=check_finite,
            check_labels=check_labels,
            accuracy_outputs=branches,
            **kwargs,
        )
        self.teachers = [freeze(teacher) for teacher in teachers]
        self.branches = branches
        self.temperatures = temperatures
        self.alphas = [weights[f"alpha[{i}]"] for i in range(count)]
        self.betas = [weights[f"beta[{i}]"] for i in range(count)]
        self.ce_weight = weights["ce_weight"]
        self.ensemble_weight = weights["ensemble_weight"]
        self.embedding_layer = embedding_layer
        self.embedding_adapter = embedding_adapter
        self.branch_weighting = branch_weighting
        self.logit_standardization = check_flag("logit_standardization", logit_standardization)
        self.kd_losses = [
            SoftTargetLoss(t, logit_standardization=self.logit_standardization, student_layer_name=branch)
            for t, branch in zip(temperatures, branches, strict=True)
        ]
        self.embedding_losses = [
            EmbeddingMimicryLoss(
                adapter=embedding_adapter, teacher_layer_name=embedding_layer, student_layer_name=embedding_name(branch)
            )
            for branch in branches
        ]
        teacher_logits = [logits_model(teacher, f"teacher {i}") for i, teacher in enumerate(teachers, start=1)]
        self.teacher_views = [
            tap_model(model, [embedding_layer]) if self.uses_embeddings else model for model in teacher_logits
        ]
        student_shapes = output_shapes(self.student_view, self.student_logits, num_classes)
        for i, (branch, view) in enumerate(zip(branches, self.teacher_views, strict=True), start=1):
            teacher_shapes = output_shapes(view if self.uses_embeddings else None, view, num_classes)
            label = f"teacher {i} ({teachers[i - 1].name})"
            self.bind_loss(f"{branch}_kd_loss", self.kd_losses[i - 1], teacher_shapes, student_shapes, label)
            if self.uses_embeddings:
                self.bind_loss(
                    f"{branch}_embedding_loss", self.embedding_losses[i - 1], teacher_shapes, student_shapes, label
                )
        self.mark_built()

    def deliverables(self) -> dict:
        from keras_kd.models.multibranch import extract_branch

        branches = {f"branch{i}": extract_branch(self.student, i) for i in range(1, self.num_teachers + 1)}
        return {"student": self.student, **branches}

    def projector_taps(self) -> list:
        taps = [("projector", self.student, [embedding_name(b) for b in self.branches])]
        # The paper's t-SNE compares the student's embeddings with its teachers'.
        taps += [(f"projector_teacher{i}", t, [self.embedding_layer]) for i, t in enumerate(self.teachers, start=1)]
        return taps

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    def frozen_teachers(self) -> list[keras.Model]:
        return list(self.teacher_views)

    def compute_terms(self, x, y, student_outputs, training):
        teachers = self.teacher_pass(x)
        share = 1.0 / self.num_teachers if self.branch_weighting == "mean" else 1.0
        terms = [LossTerm("ensemble_ce_loss", self.ensemble_weight, cross_entropy(y, student_outputs[LOGITS]))]
        for i, (branch, teacher) in enumerate(zip(self.branches, teachers, strict=True)):
            terms.append(LossTerm(f"{branch}_ce_loss", share * self.ce_weight, cross_entropy(y, student_outputs[branch])))
            name = f"{branch}_kd_loss"
            value = self.loss_value(name, self.kd_losses[i], teacher, student_outputs, y, training)
            terms.append(LossTerm(name, share * self.alphas[i], value))
            if self.uses_embeddings:
                name = f"{branch}_embedding_loss"
                value = self.loss_value(name, self.embedding_losses[i], teacher, student_outputs, y, training)
                terms.append(LossTerm(name, share * self.betas[i], value))
        return terms

    def get_config(self) -> dict:
        return {
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "student": keras.saving.serialize_keras_object(self.student),
            "temperature": self.temperatures,
            "alpha": self.alphas,
            "beta": self.betas,
            "logit_standardization": self.logit_standardization,
            "ce_weight": self.ce_weight,
            "ensemble_weight": self.ensemble_weight,
            "embedding_layer": self.embedding_layer,
            "embedding_adapter": self.embedding_adapter,
            "branch_weighting": self.branch_weighting,
            **self.base_config(),
        }

    @classmethod
    def from_config(cls, config: dict) -> EnsembleDistiller:
        return cls(**deserialize_entries(config, ("student", "teachers")))
