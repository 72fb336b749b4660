"""Shared machinery of every keras_kd distiller.

A distiller is a `keras.Model` whose `call()` runs the student, so `predict`,
`evaluate` and `export` act on the student, and whose `train_step` combines a
list of weighted loss terms computed from ONE forward pass of each network.
Subclasses only say which terms to compute (`compute_terms`).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from keras import ops

from keras_kd.losses.base import check_non_negative
from keras_kd.taps import LOGITS, tap_model


class LossTerm:
    """One weighted term of a distiller's objective, reported as its own metric."""

    __slots__ = ("name", "weight", "value")

    def __init__(self, name: str, weight: float, value):
        self.name = name
        self.weight = weight
        self.value = value


def cross_entropy(labels, logits):
    """Batch-mean sparse cross-entropy from logits, in float32."""
    return ops.mean(
        keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True
        )
    )


def deserialize_entries(config: dict, keys: Sequence[str]) -> dict:
    """A copy of `config` with the nested Keras objects under `keys` rebuilt."""
    config = dict(config)
    for key in keys:
        config[key] = keras.saving.deserialize_keras_object(config[key])
    return config


def is_multi_worker(strategy=None) -> bool:
    """True for a MultiWorkerMirroredStrategy that spans several workers."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.extended._in_multi_worker_mode()
    )


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Weights must be finite numbers >= 0 and not all zero."""
    checked = {name: check_non_negative(name, value) for name, value in weights.items()}
    if not any(checked.values()):
        names = ", ".join(checked)
        raise ValueError(f"All loss weights ({names}) are zero: nothing would be trained.")
    return checked


class BaseDistiller(keras.Model):
    """Frozen teacher(s), one student pass, weighted terms, metrics, checks.

    Args:
        student: the model to train; its output is logits `(batch, classes)`.
        num_classes: number of classes (validated against the labels).
        term_names: names of the terms `compute_terms` returns, in order;
            each becomes a metric (History, TensorBoard, progress bar).
        student_taps: layer names of the student whose outputs the terms
            need, fetched in the SAME forward pass as the logits.
        check_finite: stop with an error naming the loss term and the step
            when a term becomes NaN/Inf.
        check_labels: fail with a clear error when a label is outside
            `[0, num_classes)`.
        accuracy_outputs: keys of the `call(..., features=True)` dict (other
            than `"logits"`) whose top-1 accuracy is reported as
            `"{key}_accuracy"` (e.g. every branch of a multi-branch student).
    """

    def __init__(
        self,
        student: keras.Model,
        num_classes: int,
        term_names: Sequence[str],
        student_taps: Sequence[str] = (),
        check_finite: bool = True,
        check_labels: bool = True,
        accuracy_outputs: Sequence[str] = (),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.student = student
        self.num_classes = int(num_classes)
        self.student_taps = tuple(student_taps)
        self.check_finite = bool(check_finite)
        self.check_labels = bool(check_labels)
        self.student_view = tap_model(student, self.student_taps) if self.student_taps else None
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = {name: keras.metrics.Mean(name=name) for name in term_names}
        self.output_accuracy_trackers = {
            key: keras.metrics.SparseCategoricalAccuracy(name=f"{key}_accuracy") for key in accuracy_outputs
        }

    def mark_built(self) -> None:
        """Call at the end of a subclass `__init__`: every sub-network and adapter
        already has its weights, so Keras' symbolic build (which fails under
        MultiWorkerMirroredStrategy, keras-team/keras#20585) is skipped and
        `.keras` saves keep the optimizer state."""
        self.built = True

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 reduces a per-replica batch here, which fails under
        # MultiWorkerMirroredStrategy (keras-team/keras#20585). A distiller is
        # built at construction, so only the optimizer needs its variables.
        if is_multi_worker(self.distribute_strategy):
            if self._compile_metrics is not None:
                raise ValueError(
                    "compile(metrics=...) is not supported under MultiWorkerMirroredStrategy; "
                    "the distiller already reports `accuracy` and every loss term."
                )
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            self._post_build()
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # -- what subclasses provide ------------------------------------------------

    def deployable(self) -> keras.Model:
        """The network to save, export and ship: the student (overridden by
        trainers whose product is another network, e.g. SFTN's teacher)."""
        return self.student

    def compute_terms(self, x, y, student_outputs: dict, training: bool) -> list[LossTerm]:
        """The weighted loss terms for one batch (student already run once)."""
        raise NotImplementedError

    # -- Keras plumbing ---------------------------------------------------------

    def call(self, inputs, training=None, features=False):
        """Student logits; with `features=True`, a dict of logits and taps."""
        if self.student_view is None:
            logits = self.student(inputs, training=training)
            return {LOGITS: logits} if features else logits
        outputs = self.student_view(inputs, training=training)
        return outputs if features else outputs[LOGITS]

    @property
    def metrics(self):
        metrics = [
            self.loss_tracker,
            *self.term_trackers.values(),
            self.accuracy_tracker,
            *self.output_accuracy_trackers.values(),
        ]
        if self.compiled and self._compile_metrics is not None:
            metrics.append(self._compile_metrics)
        return metrics

    def train_step(self, data):
        x, y = self._unpack(data)
        with tf.GradientTape() as tape:
            outputs = self(x, training=True, features=True)
            terms = self.compute_terms(x, y, outputs, training=True)
            total = self._total(terms)
            regularization = self.student.losses  # weight penalties; the teacher's are constants
            if regularization:
                total = total + ops.cast(ops.sum(regularization), "float32")
            # Gradients of the mean over the GLOBAL batch: divide by replicas.
            scaled = total / tf.distribute.get_strategy().num_replicas_in_sync
            scaled = self.optimizer.scale_loss(scaled)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables, strict=False))
        return self._update_metrics(y, outputs, terms, total)

    def test_step(self, data):
        x, y = self._unpack(data)
        outputs = self(x, training=False, features=True)
        terms = self.compute_terms(x, y, outputs, training=False)
        return self._update_metrics(y, outputs, terms, self._total(terms))

    # -- helpers ----------------------------------------------------------------

    def _unpack(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if sample_weight is not None:
            raise ValueError(
                f"{type(self).__name__} does not support sample_weight / class_weight: "
                "every term is a batch mean. Resample the dataset instead."
            )
        if y is None:
            raise ValueError(f"{type(self).__name__} needs labels: feed (images, labels) batches.")
        if self._compile_loss is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss; call compile() without `loss=`."
            )
        y = ops.convert_to_tensor(y)
        if len(y.shape) == 2 and y.shape[-1] == 1:
            y = ops.squeeze(y, axis=-1)
        if len(y.shape) != 1:
            raise ValueError(
                f"Labels must be integer class indices of shape (batch,), got shape {y.shape}"
                " (one-hot labels are not supported)."
            )
        if not y.dtype.is_integer:
            y = ops.cast(y, "int32")
        if self.check_labels:
            message = f"labels must lie in [0, {self.num_classes}) (the model's class count)"
            checks = [
                tf.debugging.assert_non_negative(y, message=message),
                tf.debugging.assert_less(y, ops.cast(self.num_classes, y.dtype), message=message),
            ]
            with tf.control_dependencies(checks):  # fail before the loss sees the label
                y = tf.identity(y)
        return x, y

    def _total(self, terms: list[LossTerm]):
        checks = []
        if self.check_finite:
            optimizer = getattr(self, "optimizer", None)  # None before compile()
            step = optimizer.iterations if optimizer is not None else -1
            checks = [
                tf.debugging.Assert(
                    tf.reduce_all(tf.math.is_finite(term.value)),
                    [f"keras_kd: loss term {term.name} is not finite (NaN/Inf) at step", step],
                    name=f"check_finite_{term.name}",
                )
                for term in terms
            ]
        with tf.control_dependencies(checks):  # no update from a non-finite loss
            return ops.sum(ops.stack([term.weight * term.value for term in terms if term.weight]))

    def _update_metrics(self, y, outputs: dict, terms, total):
        self.loss_tracker.update_state(total)
        for term in terms:
            self.term_trackers[term.name].update_state(term.value)
        self.accuracy_tracker.update_state(y, outputs[LOGITS])
        for key, tracker in self.output_accuracy_trackers.items():
            tracker.update_state(y, outputs[key])
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, outputs[LOGITS])
        results = self.get_metrics_result()
        if is_multi_worker():
            # Keras reduces step outputs over axis 0 across workers: scalars fail.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

