"""Ensemble Knowledge Distillation: branch i of a multi-branch student learns from teacher i."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_kd.distillers.base import (
    BaseDistiller,
    LossTerm,
    check_weights,
    cross_entropy,
    deserialize_entries,
)
from keras_kd.distillers.checks import check_teacher_student, freeze
from keras_kd.losses.base import check_positive
from keras_kd.losses.embedding import EmbeddingMimicryLoss
from keras_kd.losses.soft_target import SoftTargetLoss
from keras_kd.models.multibranch import branch_names, embedding_name, num_branches_of
from keras_kd.taps import LOGITS, tap_model


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
    L   = ensemble_weight * CE(y, z_bar) + (1/N) * sum_i L_i
    ```

    `h_i`/`g_i` are the pooled embeddings of branch i and teacher i; `phi_i` is
    a trainable bias-free Dense adapter, created only where their widths
    differ and owned by the distiller (never exported with the student). Any
    term is switched off by a zero weight; with every `beta_i = 0` no
    embedding is read at all. Teachers may differ in architecture and size.

    Teachers run online, once per step each, or not at all when the batches
    come from a teacher-output cache (`keras_kd.data.load(...,
    teacher_cache=...)`, built with `build_cache`): then inputs are dicts
    `{"image": x, "teacher{i}_logits": ..., "teacher{i}_embedding": ...}`
    and the step costs the same whatever the number of teachers. Check a
    cache built elsewhere with `check_cache` (same teachers, same order;
    the CLI does this itself).

    Metrics: `loss`, `ensemble_ce_loss`, `branch{i}_ce_loss`,
    `branch{i}_kd_loss`, `branch{i}_embedding_loss`, `accuracy` (ensemble)
    and `branch{i}_accuracy`.

    Args:
        student: a multi-branch student with one branch per teacher.
        teachers: trained models returning logits for the same classes.
        temperature, alpha, beta: one value for all teachers or one per teacher.
        ce_weight: weight of each branch's hard-label cross-entropy.
        ensemble_weight: weight of the cross-entropy of the ensemble output.
        embedding_layer: layer of every teacher holding its pooled embedding.

    Example:

    >>> import numpy as np
    >>> from keras_kd import models
    >>> teachers = [models.get(name, (28, 28, 1), 10) for name in ("resnet8", "cnn")]
    >>> student = models.multibranch("resnet8", 2, (28, 28, 1), 10)
    >>> distiller = EnsembleDistiller(student, teachers, temperature=4.0)
    >>> distiller.compile(optimizer="sgd")
    >>> x, y = np.random.rand(4, 28, 28, 1).astype("float32"), np.arange(4)
    >>> history = distiller.fit(x, y, epochs=1, verbose=0)
    >>> [name for name in history.history if "accuracy" in name]
    ['accuracy', 'branch1_accuracy', 'branch2_accuracy']
    """

    def __init__(
        self,
        student: keras.Model,
        teachers: Sequence[keras.Model],
        temperature: float | Sequence[float] = 4.0,
        alpha: float | Sequence[float] = 1.0,
        beta: float | Sequence[float] = 1.0,
        ce_weight: float = 1.0,
        ensemble_weight: float = 1.0,
        embedding_layer: str = "embedding",
        check_finite: bool = True,
        check_labels: bool = True,
        **kwargs,
    ):
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
            student,
            num_classes,
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
        self.kd_losses = [SoftTargetLoss(t) for t in temperatures]
        self.embedding_loss = EmbeddingMimicryLoss()
        self.teacher_views = [
            tap_model(teacher, [embedding_layer]) if self.uses_embeddings else None for teacher in teachers
        ]
        self.adapters = self._build_adapters() if self.uses_embeddings else {}
        self.mark_built()

    def _build_adapters(self) -> dict:
        adapters = {}
        for branch, view in zip(self.branches, self.teacher_views, strict=True):
            student_shape = tuple(self.student_view.output[embedding_name(branch)].shape)
            teacher_shape = tuple(view.output[self.embedding_layer].shape)
            if len(student_shape) != 2 or len(teacher_shape) != 2:
                raise ValueError(
                    f"Embedding mimicry needs pooled (batch, dim) embeddings: {branch} gives {student_shape}, "
                    f"the teacher's {self.embedding_layer!r} layer gives {teacher_shape}. Pick a pooled layer "
                    "with `embedding_layer` or set beta=0."
                )
            adapter = self.embedding_loss.build_adapter(student_shape, teacher_shape, name=f"adapter_{branch}")
            if adapter is not None:
                adapter.build(student_shape)
                adapters[branch] = adapter
        return adapters

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    def call(self, inputs, training=None, features=False):
        if isinstance(inputs, dict):  # batches from a teacher-output cache
            inputs = inputs["image"]
        return super().call(inputs, training=training, features=features)

    def teacher_outputs(self, x) -> list[dict]:
        """Per teacher `{"logits": ..., "embedding": ...}`: from the cache
        columns when `x` is a cache batch, otherwise one inference pass each."""
        if isinstance(x, dict):
            cached_teachers = sum(1 for key in x if key.startswith("teacher") and key.endswith("_logits"))
            if cached_teachers != self.num_teachers:
                raise ValueError(
                    f"The cache batches hold outputs of {cached_teachers} teachers but the distiller has "
                    f"{self.num_teachers}: the cache belongs to other teachers. Check it with check_cache()."
                )
            return [self._cached(x, index) for index in range(1, self.num_teachers + 1)]
        outputs = []
        for teacher, view in zip(self.teachers, self.teacher_views, strict=True):
            if view is None:
                outputs.append({LOGITS: teacher(x, training=False)})
            else:
                values = view(x, training=False)
                outputs.append({LOGITS: values[LOGITS], "embedding": values[self.embedding_layer]})
        return outputs

    def _cached(self, x: dict, index: int) -> dict:
        from keras_kd.data.cache import output_key

        wanted = {LOGITS: output_key(index, "logits")}
        if self.uses_embeddings:
            wanted["embedding"] = output_key(index, "embedding")
        missing = [key for key in wanted.values() if key not in x]
        if missing:
            raise ValueError(
                f"Cache batches lack {', '.join(missing)}: the cache was built for fewer teachers "
                "or without embeddings. Rebuild it with EnsembleDistiller.build_cache."
            )
        return {name: x[key] for name, key in wanted.items()}

    def compute_terms(self, x, y, student_outputs, training):
        teachers = self.teacher_outputs(x)
        share = 1.0 / self.num_teachers
        terms = [LossTerm("ensemble_ce_loss", self.ensemble_weight, cross_entropy(y, student_outputs[LOGITS]))]
        for i, (branch, teacher) in enumerate(zip(self.branches, teachers, strict=True)):
            logits = student_outputs[branch]
            terms.append(LossTerm(f"{branch}_ce_loss", share * self.ce_weight, cross_entropy(y, logits)))
            terms.append(
                LossTerm(f"{branch}_kd_loss", share * self.alphas[i], self.kd_losses[i](teacher[LOGITS], logits))
            )
            if self.uses_embeddings:
                embedding = student_outputs[embedding_name(branch)]
                if branch in self.adapters:
                    embedding = self.adapters[branch](embedding)
                value = self.embedding_loss(teacher["embedding"], embedding)
                terms.append(LossTerm(f"{branch}_embedding_loss", share * self.betas[i], value))
        return terms

    def build_cache(self, images, preprocess, path, batch_size: int = 256, verbose: int = 1):
        """Runs every teacher once over the uint8 training `images` and stores
        their logits (and embeddings when used) under `path`. Returns the
        `keras_kd.data.TeacherOutputCache`; feed it to `keras_kd.data.load`."""
        from keras_kd.data.cache import TeacherOutputCache

        return TeacherOutputCache.build(
            self.teachers,
            images,
            preprocess,
            path,
            embedding_layer=self.embedding_layer if self.uses_embeddings else None,
            batch_size=batch_size,
            verbose=verbose,
        )

    def check_cache(self, cache) -> None:
        """Raises unless `cache` holds these teachers' outputs (weights and order)."""
        cache.check_teachers(self.teachers, embeddings=self.uses_embeddings)

    def get_config(self) -> dict:
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "temperature": self.temperatures,
            "alpha": self.alphas,
            "beta": self.betas,
            "ce_weight": self.ce_weight,
            "ensemble_weight": self.ensemble_weight,
            "embedding_layer": self.embedding_layer,
            "check_finite": self.check_finite,
            "check_labels": self.check_labels,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict) -> EnsembleDistiller:
        config = deserialize_entries(config, ("student",))
        config["teachers"] = [keras.saving.deserialize_keras_object(t) for t in config["teachers"]]
        return cls(**config)
