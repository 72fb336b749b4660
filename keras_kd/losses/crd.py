"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020)."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import ops

from keras_kd.adapters import PairEmbedding, flat_width
from keras_kd.checks import check_count, check_flag, check_positive
from keras_kd.losses.base import DeferredStateUpdates, DistillationLoss, LossContext, check_batched
from keras_kd.registry import SuiteRow, register_loss


def _unit(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)


def _all_gather(value):
    """`value` of every replica, concatenated on axis 0 (itself off a strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


def _rows(variable, index):
    """Rows `index` of a memory variable, gathered from the variable itself: reading the whole bank
    as a tensor first would make the scatter update after it copy the bank (30 MB at 60,000 x 128)."""
    return tf.gather(variable.value, index)


@keras.saving.register_keras_serializable(package="keras_kd")
class ContrastMemory(DeferredStateUpdates, keras.layers.Layer):
    """CRD's trainable embeddings and its two memory banks.

    `embedding` (a `keras_kd.adapters.PairEmbedding`) maps each network's
    features to `feature_dim` (linear, then L2-normalized). `student_memory` and
    `teacher_memory` hold one running embedding per training example
    (`num_samples x feature_dim`, non-trainable, initialised uniform in
    `+-1/sqrt(feature_dim/3)`), updated after each step as
    `m_i <- normalize(momentum * m_i + (1 - momentum) * v_i)` for the batch's
    examples; `memory_labels` holds each row's class (-1 until first seen).
    Under `tf.distribute` the batch rows of every replica are gathered first,
    so every copy of the banks receives the same update. `z_student` /
    `z_teacher` are the NCE normalisation constants, set from the first
    training batch and fixed afterwards (under `tf.distribute` each replica
    scores its first step with its own share of that batch; from the second
    step on all use the first replica's value).
    """

    def __init__(self, num_samples: int, feature_dim: int = 128, num_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_samples, self.feature_dim, self.num_negatives = int(num_samples), int(feature_dim), int(num_negatives)
        self.temperature, self.momentum, self.seed = float(temperature), float(momentum), seed
        self.embedding = PairEmbedding(self.feature_dim, name="embedding")
        self.seed_generator = keras.random.SeedGenerator(seed, name="negatives")

    def build(self, shapes):
        self.embedding.build(shapes)
        bound = 1.0 / math.sqrt(self.feature_dim / 3.0)
        init = keras.initializers.RandomUniform(-bound, bound, seed=self.seed)
        for name in ("student_memory", "teacher_memory"):
            setattr(self, name, self.add_weight(shape=(self.num_samples, self.feature_dim), initializer=init,
                                                trainable=False, name=name, aggregation="only_first_replica"))
        self.memory_labels = self.add_weight(shape=(self.num_samples,), initializer=keras.initializers.Constant(-1),
                                             dtype="int32", trainable=False, name="memory_labels",
                                             aggregation="only_first_replica")
        for name in ("z_student", "z_teacher"):
            setattr(self, name, self.add_weight(shape=(), initializer=keras.initializers.Constant(-1.0),
                                                trainable=False, name=name, aggregation="only_first_replica"))

    def embed(self, teacher, student):
        teacher, student = self.embedding(teacher, student)
        return _unit(teacher), _unit(student)

    def sample(self):
        """`num_negatives` uniform row indices, drawn once per step for the whole batch."""
        return keras.random.randint((self.num_negatives,), 0, self.num_samples, dtype="int32",
                                    seed=self.seed_generator)

    def similarities(self, anchor, memory, index, negatives):
        """`<memory row, anchor> / T` for each example's own row `(batch,)` and
        for the shared negatives `(batch, num_negatives)`."""
        anchor = anchor / self.temperature  # scaled before the products: batch x dim values, not batch x negatives
        positive = ops.sum(anchor * _rows(memory, index), axis=-1)
        negative = ops.matmul(anchor, ops.transpose(_rows(memory, negatives)))
        return positive, negative

    def log_z(self, positive, negative, z, training: bool):
        """`log Z`, `Z = mean(exp(scores)) * num_samples` of the first training
        batch, a constant afterwards and never differentiated (the authors
        detach it); the batch's scores are only reduced while `Z` is unset."""

        def from_batch():
            count = ops.cast(ops.size(negative) + ops.size(positive), negative.dtype)
            total = ops.logsumexp(ops.stack([ops.logsumexp(positive), ops.logsumexp(negative)]))
            return ops.stop_gradient(total - ops.log(count) + math.log(self.num_samples))

        current = ops.convert_to_tensor(z)
        unset = current < 0
        value = ops.cond(unset, from_batch, lambda: ops.log(ops.maximum(current, 1e-30)))
        if training:
            z.assign(ops.where(unset, ops.exp(value), current))
        return value

    @property
    def deferred_weights(self) -> list:
        return [self.student_memory, self.teacher_memory, self.memory_labels]

    def update(self, v_teacher, v_student, index, labels=None):
        index = ops.cast(_all_gather(ops.reshape(index, (-1,))), "int32")
        for memory, value in ((self.student_memory, v_student), (self.teacher_memory, v_teacher)):
            value = _all_gather(ops.stop_gradient(value))
            rows = self.momentum * _rows(memory, index) + (1 - self.momentum) * value
            self.queue_update(memory, index, _unit(rows))
        if labels is not None:
            self.queue_update(self.memory_labels, index, ops.cast(_all_gather(ops.reshape(labels, (-1,))), "int32"))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_samples": self.num_samples, "feature_dim": self.feature_dim,
                "num_negatives": self.num_negatives, "temperature": self.temperature, "momentum": self.momentum,
                "seed": self.seed}


def nce_loss(positive, negative, log_z, num_samples: int, negative_mask=None):
    """NCE against uniform noise `Pn = 1/num_samples` with `K` negatives.

    `positive` `(batch,)` and `negative` `(batch, K)` are `log` scores before
    normalisation (`<m, v> / T`); with `P = exp(score) / Z` and
    `l = log P - log(K Pn)`, `-log D1 = softplus(-l)` for the positive and
    `-log D0 = softplus(l)` for each negative, i.e. the authors'
    `-(log P/(P + K Pn) + sum log K Pn/(P + K Pn))` without their `1e-7`
    guard (the softplus form cannot overflow). Summed over the batch's
    negatives (those with `negative_mask` 1), averaged over the batch.
    """
    k_pn = ops.shape(negative)[-1] / num_samples
    shift = log_z + math.log(k_pn)
    d1 = ops.softplus(shift - positive)
    d0 = ops.softplus(negative - shift)
    if negative_mask is not None:
        d0 = d0 * negative_mask
    return (ops.sum(d1) + ops.sum(d0)) / ops.cast(ops.shape(positive)[0], positive.dtype)


@register_loss(
    "crd",
    SuiteRow("CRD (embedding, 16384 negatives)", ({"weight": 0.8, "teacher_layer_name": "embedding",
                                                   "student_layer_name": "embedding"},),
             student_loss_weight=1.0, order=12),
)
class CRDLoss(DistillationLoss):
    """Contrastive representation distillation with a memory bank.

    Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR
    2020. Both networks' features are embedded (linear + L2 norm, `feature_dim`
    128); for each example the student's embedding must pick out the
    teacher's stored embedding of the SAME example among `num_negatives`
    stored embeddings of other examples (and vice versa), scored `exp(<u, v> / T) / Z`
    with T = 0.07, by noise-contrastive estimation against uniform noise.
    Memories follow the batch embeddings with momentum 0.5. Defaults follow
    the authors' code (RepDistiller), which produced the published table:
    16384 negatives, weight 0.8 with cross-entropy at weight 1, Z fixed from
    the first batch, negatives from the other classes (its default `exact`
    sampling mode).

    Differences from RepDistiller, for speed: the `num_negatives` rows are
    drawn uniformly once per step and shared by the whole batch (RepDistiller
    draws them per example), and with `exclude_same_class` a negative of the
    example's own class is dropped from its sum instead of never being drawn,
    so an example sees about `num_negatives * (1 - 1/classes)` negatives. Each
    example's negatives are still uniform draws from the other classes, so the
    loss has the same expectation; one shared draw means one
    `num_negatives x feature_dim` gather per bank and step instead of
    `batch x num_negatives x feature_dim` (1 GB per bank at the defaults),
    and its cost does not grow with the size of the memory bank. Rows whose
    class is not known yet (not visited since the start) are never dropped.

    Needs each example's row in the training set: batches must be dicts with
    an `"index"` entry (`keras_kd.data.load(..., with_index=True)`; the CLI
    does this itself for methods whose losses need it), and `num_samples`, the
    size of the training set (the CLI fills it in). Held-out images have no
    memory rows, so evaluation on batches without indices reports 0. The embeddings and memory
    banks are a `ContrastMemory` the distiller owns, saves and never exports.

    Example:

    >>> import numpy as np
    >>> loss = CRDLoss(num_samples=20, num_negatives=8)
    >>> part = loss.build_parts((None, 16), (None, 8))
    >>> t, s = np.random.rand(4, 16).astype("float32"), np.random.rand(4, 8).astype("float32")
    >>> value = loss(t, s, parts=part, inputs={"index": np.arange(4)}, training=True)
    >>> bool(value > 0)
    True
    """

    metric_name = "crd_loss"
    needs_sample_index = True

    def __init__(self, num_samples: int | None = None, feature_dim: int = 128, num_negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5, exclude_same_class: bool = True, **kwargs):
        super().__init__(**kwargs)
        num_samples = check_count("num_samples", num_samples, minimum=1, optional=True)
        feature_dim = check_count("feature_dim", feature_dim, minimum=1)
        num_negatives = check_count("num_negatives", num_negatives, minimum=1)
        if not 0 <= momentum < 1:
            raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}.")
        self.num_samples = num_samples
        self.feature_dim = feature_dim
        self.num_negatives = num_negatives
        self.temperature = check_positive("temperature", temperature)
        self.momentum = float(momentum)
        self.exclude_same_class = check_flag("exclude_same_class", exclude_same_class)

    def check_shapes(self, teacher_shape, student_shape):
        check_batched("CRD", teacher_shape, student_shape)

    def build_parts(self, teacher_shape, student_shape):
        if self.num_samples is None:
            raise ValueError("CRDLoss needs `num_samples`, the number of training examples (its memory bank "
                             "holds one row each); the CLI sets it from the data.")
        memory = ContrastMemory(self.num_samples, self.feature_dim, self.num_negatives, self.temperature,
                                self.momentum)
        memory.build((flat_width(teacher_shape), flat_width(student_shape)))
        return memory

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        memory = context.parts
        if memory is None:
            raise ValueError("CRDLoss needs its ContrastMemory: pass parts=loss.build_parts(...) (distillers do).")
        inputs = context.inputs
        if not (isinstance(inputs, dict) and "index" in inputs):
            if not context.training:  # held-out images have no memory rows: no contrastive term to report
                return ops.zeros((), "float32")
            raise ValueError(
                "CRDLoss needs each example's row in the training set: feed dict batches with an 'index' entry "
                "(keras_kd.data.load(..., with_index=True))."
            )
        index = ops.cast(ops.reshape(inputs["index"], (-1,)), "int32")
        v_teacher, v_student = memory.embed(teacher_output, student_output)
        v_teacher, v_student = ops.cast(v_teacher, "float32"), ops.cast(v_student, "float32")
        negatives = memory.sample()
        mask = None
        if self.exclude_same_class and context.labels is not None:
            labels = ops.cast(ops.reshape(context.labels, (-1, 1)), "int32")
            mask = ops.cast(ops.not_equal(labels, _rows(memory.memory_labels, negatives)), "float32")
        loss = 0.0
        # The student's embedding against the teacher's memories, and the teacher's against the student's.
        for anchor, bank, z in ((v_student, memory.teacher_memory, memory.z_student),
                                (v_teacher, memory.student_memory, memory.z_teacher)):
            positive, negative = memory.similarities(anchor, bank, index, negatives)
            log_z = memory.log_z(positive, negative, z, context.training)
            loss = loss + nce_loss(positive, negative, log_z, memory.num_samples, mask)
        if context.training:
            memory.update(v_teacher, v_student, index, context.labels)
        return loss

    def get_config(self) -> dict:
        return {**super().get_config(), "num_samples": self.num_samples, "feature_dim": self.feature_dim,
                "num_negatives": self.num_negatives, "temperature": self.temperature, "momentum": self.momentum,
                "exclude_same_class": self.exclude_same_class}
