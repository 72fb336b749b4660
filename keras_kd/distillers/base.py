"""Shared machinery of every keras_kd distiller and trainer.

A distiller is a `keras.Model` whose `call()` runs the student, so `predict`,
`evaluate` and `export` act on the student, and whose `train_step` combines
weighted loss terms computed from ONE forward pass of each network. Every
term is a `keras_kd.losses.DistillationLoss` (or cross-entropy) called with
one `LossContext`: labels, step, epoch, its trainable part and every tapped
output. Subclasses only say which terms to compute (`compute_terms`).

Safety checks are values, not asserts, so they hold under `jit_compile=True`
(XLA compiles `tf.debugging.Assert` away): each step computes whether every
term is finite and every label in range, all-reduced over replicas; a bad
step applies NO update and records what went wrong, and a callback that
`fit`/`evaluate` install raises `NonFiniteLossError` / `LabelRangeError` right
after that step.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_kd import _compat
from keras_kd._compat import is_multi_worker
from keras_kd.checks import check_flag, check_non_negative
from keras_kd.losses.base import LOGITS, DeferredStateUpdates, DistillationLoss, LossContext, describe
from keras_kd.taps import tap_model

#: `failure` codes besides a term index.
_NO_FAILURE, _BAD_LABEL = -1, -2


class TrainingError(RuntimeError):
    """Training was stopped by a keras_kd safety check; no update was applied
    for the step named in the message."""


class NonFiniteLossError(TrainingError):
    """A loss term became NaN/Inf."""

    def __init__(self, term: str, step: int):
        self.term, self.step = term, step
        super().__init__(
            f"keras_kd: loss term {term} is not finite (NaN/Inf) at step {step}; that step was not applied."
        )


class LabelRangeError(TrainingError):
    """A label lies outside `[0, num_classes)`."""

    def __init__(self, label: int, num_classes: int, step: int):
        self.label, self.num_classes, self.step = label, num_classes, step
        super().__init__(
            f"keras_kd: label {label} at step {step} is outside [0, {num_classes}) (the model's class count); "
            "that step was not applied."
        )


class LossTerm:
    """One weighted term of a distiller's objective, reported as its own metric.

    `frozen`: variables this term must not update (its gradient reaches every
    other trainable variable), e.g. a shared stem that only some terms train.
    """

    __slots__ = ("name", "weight", "value", "frozen")

    def __init__(self, name: str, weight: float, value, frozen=()):
        self.name = name
        self.weight = weight
        self.value = value
        self.frozen = tuple(frozen)


def cross_entropy(labels, logits):
    """Batch-mean sparse cross-entropy from logits, in float32."""
    return ops.mean(
        keras.losses.sparse_categorical_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)
    )


def deserialize_entries(config: dict, keys: Sequence[str]) -> dict:
    """A copy of `config` with the nested Keras objects under `keys` rebuilt."""
    config = dict(config)
    for key in keys:
        value = config.get(key)
        if isinstance(value, list):
            config[key] = [keras.saving.deserialize_keras_object(item) for item in value]
        elif value is not None:
            config[key] = keras.saving.deserialize_keras_object(value)
    return config


def reject_positional(cls_name: str, args: tuple, keywords: str) -> None:
    """Models are keyword-only: `Distiller(resnet20, resnet8)` is ambiguous
    (keras.distillation takes the teacher first, keras_kd 0.2 the student)."""
    if args:
        raise TypeError(
            f"{cls_name} takes its models as keyword arguments only: {cls_name}({keywords}). "
            f"Got {len(args)} positional argument(s)."
        )


def check_weights(weights: dict[str, float]) -> dict[str, float]:
    """Weights must be finite numbers >= 0 and not all zero."""
    checked = {name: check_non_negative(name, value) for name, value in weights.items()}
    if not any(checked.values()):
        names = ", ".join(checked)
        raise ValueError(f"All loss weights ({names}) are zero: nothing would be trained.")
    return checked


def output_shapes(view: keras.Model | None, model: keras.Model, num_classes: int | None = None) -> dict[str, tuple]:
    """Shapes (with batch) of every output of a tap view (or of the model's
    logits; `(None, num_classes)` for a subclassed model, which has no symbolic outputs)."""
    if view is None or not isinstance(view.output, dict):
        return {LOGITS: tuple(model.outputs[0].shape) if getattr(model, "outputs", None) else (None, num_classes)}
    return {key: tuple(tensor.shape) for key, tensor in view.output.items()}


def frozen_outputs(view: keras.Model, images) -> dict:
    """`{"logits": ..., <taps>}` of a frozen network from one inference-mode
    pass, with `stop_gradient` on every output."""
    outputs = view(images, training=False)
    if not isinstance(outputs, dict):
        outputs = {LOGITS: outputs}
    return {key: ops.stop_gradient(value) for key, value in outputs.items()}


def images_of(inputs):
    """The images of a batch: `inputs` itself, or `inputs["image"]` for dict
    batches that carry extra columns (sample indices, cached teacher outputs)."""
    if isinstance(inputs, dict):
        if "image" not in inputs:
            raise ValueError(f"Dict batches need an 'image' entry; got keys {sorted(inputs)}.")
        return inputs["image"]
    return inputs


def _metric(identifier) -> keras.metrics.Metric:
    """A metric of (integer labels, student logits) from a compile() identifier."""
    if identifier in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name="compiled_accuracy")
    metric = keras.metrics.get(identifier)
    if isinstance(metric, keras.metrics.Metric):
        return metric
    return keras.metrics.MeanMetricWrapper(metric, name=getattr(metric, "__name__", str(identifier)))


class TrainingGuard(keras.callbacks.Callback):
    """Installed by `fit`/`evaluate`: keeps the distiller's epoch counter and
    raises the error recorded by a step that was refused."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.enter_epoch(epoch)

    def on_train_end(self, logs=None):
        self.model.leave_epochs()

    def on_train_batch_end(self, batch, logs=None):
        self.model.raise_if_failed()

    def on_test_batch_end(self, batch, logs=None):
        self.model.raise_if_failed()


class BaseDistiller(_compat.MultiWorkerBuild, keras.Model):
    """Frozen teacher(s), one student pass, weighted terms, metrics, checks.

    Args:
        student: the model to train; its output is logits `(batch, classes)`.
        num_classes: number of classes (validated against the labels).
        term_names: names of the terms `compute_terms` returns, in order;
            each becomes a metric (History, TensorBoard, progress bar).
        student_taps: layer names of the student whose outputs the terms
            need, fetched in the SAME forward pass as the logits.
        check_finite: stop with `NonFiniteLossError` (term and step named, the
            step not applied) when a term becomes NaN/Inf.
        check_labels: stop with `LabelRangeError` when a label is outside
            `[0, num_classes)`.
        l2_weight_decay: coupled L2 regularisation: `l2_weight_decay / 2 *
            sum(v^2)` over every trainable variable is added to the loss, so
            `l2_weight_decay * v` joins each gradient BEFORE momentum, exactly
            PyTorch's `SGD(weight_decay=...)` used by the published KD
            benchmarks. Keras' own `SGD(weight_decay=...)` is decoupled
            (`v -= lr * wd * v` outside momentum), about `1 / (1 - momentum)`
            times weaker at the same number.
        accuracy_outputs: keys of the `call(..., features=True)` dict (other
            than `"logits"`) whose top-1 accuracy is reported as
            `"{key}_accuracy"` (e.g. every branch of a multi-branch student).
    """

    #: How error messages name the trained network.
    trained_role = "student"
    #: Terms the current step functions leave out (their value is 0): set by
    #: `enter_epoch` from `idle_terms_at` at the start of every epoch of `fit`.
    idle_terms: frozenset = frozenset()

    def __init__(
        self,
        *,
        student: keras.Model,
        num_classes: int,
        term_names: Sequence[str],
        student_taps: Sequence[str] = (),
        check_finite: bool = True,
        check_labels: bool = True,
        accuracy_outputs: Sequence[str] = (),
        l2_weight_decay: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.l2_weight_decay = check_non_negative("l2_weight_decay", l2_weight_decay)
        from keras_kd.distillers.checks import logits_model

        self.student = student
        self.student_logits = logits_model(student, self.trained_role)
        self.num_classes = int(num_classes)
        self.student_taps = tuple(dict.fromkeys(t for t in student_taps if t != LOGITS))
        self.check_finite = check_flag("check_finite", check_finite)
        self.check_labels = check_flag("check_labels", check_labels)
        self.student_view = tap_model(self.student_logits, self.student_taps) if self.student_taps else None
        self.term_names = list(term_names)
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = {name: keras.metrics.Mean(name=name) for name in term_names}
        self.output_accuracy_trackers = {
            key: keras.metrics.SparseCategoricalAccuracy(name=f"{key}_accuracy") for key in accuracy_outputs
        }
        self.extra_metrics = []
        self.loss_parts = {}
        # Training progress and the record of a refused step, as variables so
        # the checks work inside compiled (XLA) steps and across replicas.
        self.epoch = keras.Variable(0, dtype="int64", trainable=False, name="epoch", aggregation="only_first_replica")
        self.failure = keras.Variable(
            np.array([_NO_FAILURE, 0, 0], "int64"),
            dtype="int64",
            trainable=False,
            name="failure",
            aggregation="only_first_replica",
        )

    def base_config(self) -> dict:
        """The `get_config` entries every trainer shares."""
        return {
            "check_finite": self.check_finite,
            "check_labels": self.check_labels,
            "l2_weight_decay": self.l2_weight_decay,
            "name": self.name,
        }

    def mark_built(self) -> None:
        """Call at the end of a subclass `__init__`: every sub-network and loss
        part already has its weights, so `.keras` saves keep the optimizer state."""
        self.built = True

    # -- what subclasses provide ------------------------------------------------

    def deployable(self) -> keras.Model:
        """The network to save, export and ship: the student (overridden by
        trainers whose product is another network, e.g. SFTN's teacher)."""
        return self.student

    def deliverables(self) -> dict[str, keras.Model]:
        """Every network a run saves as `<name>.keras` (hook of the CLI runner);
        the first is the deployable one."""
        return {"student": self.student}

    def projector_taps(self) -> list[tuple[str, keras.Model, list[str]]]:
        """`(folder, model, layer names)` whose test-set embeddings a run writes
        for TensorBoard's projector."""
        return [("projector", self.student, ["embedding"])]

    def write_reports(self, run_dir, results: dict) -> dict:
        """Extra files a run writes after its evaluation (hook of the CLI
        runner); returns entries to add to `results.json`."""
        return {}

    def compute_terms(self, x, y, student_outputs: dict, training: bool) -> list[LossTerm]:
        """The weighted loss terms for one batch (student already run once)."""
        raise NotImplementedError

    def idle_terms_at(self, epoch: int) -> frozenset:
        """Names of the terms that are 0 from the 0-based `epoch` to the end of
        training (their window has closed); `compute_terms` may leave them out."""
        return frozenset()

    def enter_epoch(self, epoch: int) -> None:
        """Sets the epoch counter; when the idle terms change, rebuilds the
        train and test steps without them (a retrace where a window closes, so
        a pre-training stage stops costing its teacher pass once it ends)."""
        self.epoch.assign(epoch)
        self._set_idle_terms(self.idle_terms_at(epoch))

    def leave_epochs(self) -> None:
        """After `fit`: the steps compute every term again (`train_on_batch`,
        custom loops and `evaluate` see the epoch counter only)."""
        self._set_idle_terms(frozenset())

    def _set_idle_terms(self, idle: frozenset) -> None:
        if idle != self.idle_terms:
            self.idle_terms = idle
            self.make_train_function(force=True)
            self.make_test_function(force=True)

    # -- frozen teachers and their cache -----------------------------------------

    @property
    def needs_sample_index(self) -> bool:
        """True when a loss reads each example's row in the training set: feed
        dict batches `{"image": x, "index": i}` (`data.load(..., with_index=True)`)."""
        return False

    def frozen_teachers(self) -> list[keras.Model]:
        """Views of the frozen teachers (`logits` plus the taps the losses
        read) whose outputs a `keras_kd.data.TeacherOutputCache` can replace;
        [] for trainers whose teachers train (SFTN, OEMC) or that have none."""
        return []

    def teacher_pass(self, x) -> list[dict]:
        """`{"logits": ..., "<tap>": ...}` of every frozen teacher, without
        gradient: read from the batch when it carries cached outputs
        (`teacher1_logits`, ...), else from one inference-mode pass each."""
        from keras_kd.data.cache import output_key, outputs_of

        views = self.frozen_teachers()
        if not (isinstance(x, dict) and output_key(1, LOGITS) in x):
            return [frozen_outputs(view, images_of(x)) for view in views]
        cached = sum(1 for key in x if key.startswith("teacher") and key.endswith(f"_{LOGITS}"))
        if cached != len(views):
            raise ValueError(
                f"The batches carry cached outputs of {cached} teacher(s) but {self.name} has {len(views)}: "
                "the cache belongs to other teachers. Check it with check_teacher_cache()."
            )
        outputs = []
        for index, view in enumerate(views, start=1):
            keys = {name: output_key(index, name) for name in outputs_of(view)}
            missing = sorted(key for key in keys.values() if key not in x)
            if missing:
                raise ValueError(
                    f"The cached batches lack {', '.join(missing)}: the cache was built without the outputs "
                    f"{self.name} reads. Rebuild it with build_teacher_cache()."
                )
            outputs.append({name: ops.stop_gradient(x[key]) for name, key in keys.items()})
        return outputs

    def build_teacher_cache(self, images, labels, path, **options):
        """Runs the frozen teachers once over every view the student will see
        and stores their outputs (`keras_kd.data.TeacherOutputCache.build`
        with these teachers; `options`: preprocess, augmentation, epochs,
        dtype, top_k, max_bytes, verbose)."""
        from keras_kd.data.cache import TeacherOutputCache

        if not self.frozen_teachers():
            raise ValueError(f"{type(self).__name__} has no frozen teacher whose outputs could be cached.")
        return TeacherOutputCache.build(self.frozen_teachers(), images, labels, path, **options)

    def check_teacher_cache(self, cache) -> None:
        """Raises `CacheError` unless `cache` holds these teachers' outputs
        (same weights, same outputs, same order)."""
        cache.check_teachers(self.frozen_teachers())

    # -- losses -----------------------------------------------------------------

    def bind_loss(
        self,
        term: str,
        loss: DistillationLoss,
        teacher_shapes: dict,
        student_shapes: dict,
        teacher_label: str = "teacher",
        student_label: str = "student",
    ) -> None:
        """Checks that `loss` can carry signal between these outputs (refusing
        dead terms with both outputs named) and creates its trainable part."""
        for label, shapes, keys in (
            (teacher_label, teacher_shapes, loss.teacher_keys),
            (student_label, student_shapes, loss.student_keys),
        ):
            for key in keys:
                if key not in shapes:
                    raise ValueError(
                        f"Term {term!r}: the {label} has no output {key!r} (available: {', '.join(shapes)})."
                    )
        teacher_shape, student_shape = teacher_shapes[loss.teacher_key], student_shapes[loss.student_key]
        tapped_teacher = {key: teacher_shapes[key] for key in loss.teacher_keys}
        tapped_student = {key: student_shapes[key] for key in loss.student_keys}
        try:
            loss.check_shapes(teacher_shape, student_shape)
            loss.check_tapped_shapes(tapped_teacher, tapped_student)
        except ValueError as error:
            raise ValueError(
                f"Term {term!r} ({type(loss).__name__}) between {teacher_label} output {loss.teacher_key!r} "
                f"{describe(teacher_shape)} and {student_label} output {loss.student_key!r} "
                f"{describe(student_shape)} cannot train: {error}"
            ) from error
        part = loss.build_tapped_parts(tapped_teacher, tapped_student)
        if part is not None:
            if not part.built:
                part.build(student_shape)
            if isinstance(part, DeferredStateUpdates):
                part.defer_updates = True  # written in train_step once the step is accepted
            self.loss_parts[term] = part

    def loss_value(
        self, term: str, loss: DistillationLoss, teacher: dict, student: dict, labels, training: bool, inputs=None
    ):
        """`loss` between `teacher[loss.teacher_key]` and `student[loss.student_key]`."""
        context = LossContext(
            inputs=inputs,
            labels=labels,
            step=self._step(),
            epoch=self.epoch,
            training=training,
            parts=self.loss_parts.get(term),
            teacher_outputs=teacher,
            student_outputs=student,
        )
        return loss(teacher[loss.teacher_key], student[loss.student_key], context=context)

    # -- Keras plumbing ---------------------------------------------------------

    def call(self, inputs, training=None, features=False):
        """Student logits; with `features=True`, a dict of logits and taps.
        Dict batches (`{"image": ..., <extra columns>}`) run on their images."""
        inputs = images_of(inputs)
        if self.student_view is None:
            logits = self.student_logits(inputs, training=training)
            return {LOGITS: logits} if features else logits
        outputs = self.student_view(inputs, training=training)
        return outputs if features else outputs[LOGITS]

    def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
        """Like `keras.Model.compile`; `loss` is refused (the distiller owns its
        objective) and `metrics` are extra metrics of the student's logits."""
        if loss is not None:
            raise ValueError(f"{type(self).__name__} computes its own loss; call compile() without `loss=`.")
        if kwargs.get("weighted_metrics") is not None or kwargs.get("loss_weights") is not None:
            raise ValueError(f"{type(self).__name__} does not support weighted_metrics or loss_weights.")
        if metrics and is_multi_worker():
            raise ValueError(
                "compile(metrics=...) is not supported under MultiWorkerMirroredStrategy; "
                "the distiller already reports `accuracy` and every loss term."
            )
        self.extra_metrics = [_metric(m) for m in (metrics or [])]
        self.metric_identifiers = [m for m in (metrics or []) if isinstance(m, str)]
        super().compile(optimizer=optimizer, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is not None and getattr(self, "metric_identifiers", None):
            config["metrics"] = list(self.metric_identifiers)
        return config

    def compile_from_config(self, config):
        """Re-compiles after `keras.models.load_model` (optimizer state included)."""
        config = keras.saving.deserialize_keras_object(config)
        keys = ("optimizer", "metrics", "run_eagerly", "steps_per_execution", "jit_compile")
        self.compile(**{key: config[key] for key in keys if config.get(key) is not None})
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def training_callbacks(self) -> list:
        """Callbacks `fit` always installs (the safety checks; subclasses add
        their own, e.g. SFTN's warm-up)."""
        return [TrainingGuard()]

    def fit(self, *args, callbacks=None, **kwargs):
        return super().fit(*args, callbacks=[*(callbacks or []), *self.training_callbacks()], **kwargs)

    def evaluate(self, *args, callbacks=None, **kwargs):
        if not isinstance(callbacks, keras.callbacks.CallbackList):  # fit's validation passes its own list,
            callbacks = [*(callbacks or []), TrainingGuard()]  # which already holds a TrainingGuard
        return super().evaluate(*args, callbacks=callbacks, **kwargs)

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            *self.term_trackers.values(),
            self.accuracy_tracker,
            *self.output_accuracy_trackers.values(),
            *self.extra_metrics,
        ]

    def train_step(self, data):
        x, y = self._unpack(data)
        y, labels_ok, bad_label = self._checked_labels(y)
        state = self.forward_state()
        saved = [tf.identity(variable.value) for variable in state]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(x, training=True, features=True)
            terms = self.compute_terms(x, y, outputs, training=True)
            total = self._total(terms)
            regularization = self.trainable_losses()
            if self.l2_weight_decay:
                squares = [ops.sum(ops.square(ops.cast(v, "float32"))) for v in self.trainable_variables]
                regularization.append(0.5 * self.l2_weight_decay * ops.sum(ops.stack(squares)))
            if regularization:
                total = total + ops.sum(ops.stack([ops.cast(r, "float32") for r in regularization]))
            restricted = [term for term in terms if term.frozen and term.weight]
            free = total - sum(term.weight * term.value for term in restricted) if restricted else total
            # Gradients of the mean over the GLOBAL batch: divide by replicas.
            scaled = self.optimizer.scale_loss(free / replicas)
            scaled_restricted = [self.optimizer.scale_loss(t.weight * t.value / replicas) for t in restricted]
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if self.idle_terms:  # what only an idle term reached gets its zero gradient, as in the masked step
            gradients = [ops.zeros_like(v) if g is None else g for g, v in zip(gradients, variables, strict=True)]
        for term, value in zip(restricted, scaled_restricted, strict=True):
            frozen = {id(v) for v in term.frozen}
            extra = tape.gradient(value, variables)
            gradients = [
                g if e is None or id(v) in frozen else (e if g is None else g + e)
                for g, e, v in zip(gradients, extra, variables, strict=True)
            ]
        del tape
        ok = self._record(terms, labels_ok, bad_label)
        _compat.apply_gradients_if(self.optimizer, ok, gradients, variables)
        for variable, value in zip(state, saved, strict=True):  # e.g. BatchNorm statistics of a refused step
            variable.assign(ops.where(ok, variable.value, value))
        for part in self.loss_parts.values():
            if isinstance(part, DeferredStateUpdates):
                part.apply_deferred_updates(ok)
        return self._update_metrics(y, outputs, terms, total)

    def test_step(self, data):
        x, y = self._unpack(data)
        y, labels_ok, bad_label = self._checked_labels(y)
        outputs = self(x, training=False, features=True)
        terms = self.compute_terms(x, y, outputs, training=False)
        self._record(terms, labels_ok, bad_label)
        return self._update_metrics(y, outputs, terms, self._total(terms))

    def forward_state(self) -> list:
        """Non-trainable variables the training forward pass may change (BatchNorm
        statistics of the trained networks and loss parts): restored when a
        step is refused. A part's `deferred_weights` are left out: it writes
        them itself once the step is decided (`DeferredStateUpdates`)."""
        variables = list(self.student.non_trainable_weights)
        deferred = set()
        for part in self.loss_parts.values():
            variables += part.non_trainable_weights
            if isinstance(part, DeferredStateUpdates):
                deferred.update(id(v) for v in part.deferred_weights)
        unique = {id(v): v for v in variables if v.trainable is False and id(v) not in deferred}
        return list(unique.values())

    def trainable_losses(self) -> list:
        """Weight penalties of the trained networks (the teacher's are constants)."""
        return list(self.student.losses)

    # -- checks -----------------------------------------------------------------

    def raise_if_failed(self) -> None:
        """Raises the error a refused step recorded (and clears the record)."""
        code, step, label = (int(v) for v in np.asarray(self.failure.numpy()))
        if code == _NO_FAILURE:
            return
        self.failure.assign(np.array([_NO_FAILURE, 0, 0], "int64"))
        self.stop_training = True
        if code == _BAD_LABEL:
            raise LabelRangeError(label, self.num_classes, step)
        raise NonFiniteLossError(self.term_names[code], step)

    def _step(self):
        """The optimizer step (0 before `compile`)."""
        return self.optimizer.iterations if getattr(self, "optimizer", None) is not None else 0

    def _checked_labels(self, y):
        """(labels clipped into range, all-in-range flag, first bad label)."""
        if not self.check_labels:
            return y, ops.convert_to_tensor(True), ops.convert_to_tensor(0, "int64")
        y64 = ops.cast(y, "int64")
        bad = ops.logical_or(y64 < 0, y64 >= self.num_classes)
        any_bad = ops.any(bad)
        bad_label = ops.max(ops.where(bad, y64, ops.cast(-(2**62), "int64")))
        return ops.clip(y, 0, self.num_classes - 1), ops.logical_not(any_bad), bad_label

    def _record(self, terms: list[LossTerm], labels_ok, bad_label):
        """All-reduces the checks over replicas, records the first failure and
        returns whether the step may be applied."""
        names = [term.name for term in terms]
        finite = [
            ops.cast(ops.all(ops.isfinite(term.value)) if self.check_finite else True, "float32") for term in terms
        ]
        flags = ops.stack([ops.cast(labels_ok, "float32"), *finite])
        bad_label = ops.cast(bad_label, "float32")
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # tf.distribute.ReduceOp has only SUM and MEAN: gather, then min/max.
            replicas = context.num_replicas_in_sync
            flags = ops.min(ops.reshape(context.all_gather(flags[None], axis=0), (replicas, -1)), axis=0)
            bad_label = ops.max(context.all_gather(ops.reshape(bad_label, (1,)), axis=0))
        ok = ops.all(flags > 0.5)
        term_index = ops.argmin(flags[1:])
        indices = ops.convert_to_tensor([self.term_names.index(n) for n in names], "int64")
        code = ops.where(flags[0] < 0.5, ops.cast(_BAD_LABEL, "int64"), ops.take(indices, term_index))
        record = ops.stack([ops.cast(code, "int64"), ops.cast(self._step(), "int64"), ops.cast(bad_label, "int64")])
        fresh = ops.logical_and(ops.logical_not(ok), self.failure[0] == _NO_FAILURE)
        self.failure.assign(ops.where(fresh, record, self.failure))
        return ok

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
        return x, y

    def _total(self, terms: list[LossTerm]):
        return ops.sum(ops.stack([term.weight * term.value for term in terms if term.weight]))

    def _update_metrics(self, y, outputs: dict, terms, total):
        self.loss_tracker.update_state(total)
        for term in terms:
            self.term_trackers[term.name].update_state(term.value)
        self.accuracy_tracker.update_state(y, outputs[LOGITS])
        for key, tracker in self.output_accuracy_trackers.items():
            tracker.update_state(y, outputs[key])
        for metric in self.extra_metrics:
            metric.update_state(y, outputs[LOGITS])
        results = {metric.name: metric.result() for metric in self.metrics}
        if is_multi_worker():
            # Keras reduces step outputs over axis 0 across workers: scalars fail.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results
