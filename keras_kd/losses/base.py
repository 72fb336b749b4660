"""The one loss contract shared by every keras_kd distiller and trainer.

A distillation loss reads one output of the teacher and one of the student
(the logits, or a layer chosen by name, exactly as `keras.distillation`'s
`teacher_layer_name`/`student_layer_name`), and may also use the labels, the
training progress (`step`, `epoch`), every other tapped output and its own
trainable part, all handed over in a `LossContext`.
"""

from __future__ import annotations

import threading
from numbers import Integral
from typing import Any

import keras
import tensorflow as tf
from keras import ops

#: Key of the final output (logits) in every outputs dict.
LOGITS = "logits"


class LossContext:
    """What a loss may look at besides the two tensors it compares.

    Attributes:
        labels: integer class labels `(batch,)`.
        step: optimizer step (int tensor; 0 outside training).
        epoch: current epoch, 0-based (int tensor).
        training: whether the networks run in training mode.
        parts: the trainable layer the loss declared in `build_parts` (or None),
            created and owned by the distiller.
        teacher_outputs, student_outputs: every tapped output, by layer name,
            `"logits"` included (e.g. a feature loss that also needs logits).
        inputs: the batch inputs as fed to `fit` (a dict when the dataset
            carries extra columns, e.g. `{"image": ..., "index": ...}` for a
            loss with a per-sample memory bank).
    """

    __slots__ = ("labels", "step", "epoch", "training", "parts", "teacher_outputs", "student_outputs", "inputs")

    def __init__(
        self,
        labels=None,
        step=0,
        epoch=0,
        training: bool = False,
        parts: keras.layers.Layer | None = None,
        teacher_outputs: dict | None = None,
        student_outputs: dict | None = None,
        inputs=None,
    ):
        self.inputs = inputs
        self.labels = labels
        self.step = step
        self.epoch = epoch
        self.training = training
        self.parts = parts
        self.teacher_outputs = teacher_outputs or {}
        self.student_outputs = student_outputs or {}


class DistillationLoss:
    """Base class of every keras_kd loss.

    Subclasses implement `compute_loss(teacher_output, student_output, context)`
    and return a float32 scalar already averaged over the batch; they may
    override `check_shapes` (refuse a pairing that cannot carry signal, at
    construction) and `build_parts` (declare a trainable layer, e.g. a FitNet
    regressor, that the distiller creates, trains, saves and never exports).
    A loss that reads more than one layer of each network (FSP) names the
    others in `teacher_keys`/`student_keys` and checks them all in
    `check_tapped_shapes`.

    The loss never stops gradients itself: a distiller with a frozen teacher
    passes `stop_gradient` teacher outputs, while SFTN trains the teacher
    through the same loss objects. It never scales itself for
    `tf.distribute` either: distillers divide the weighted total once by the
    number of replicas, so values reported to metrics are plain batch means.

    Stages: `active_epochs=(start, end)` makes the term count only while
    `start <= context.epoch < end` (0-based epochs; `end=None`: to the end of
    training; default: always). Outside its window the term is exactly 0,
    with zero gradient to the student and to the loss's part, and so is its
    metric. It is still computed (a tensor `where` on the epoch), so a
    term's state (CRD's memory, BatchNorm statistics of its part) moves
    before its window as well; once the window has CLOSED, a `Distiller`
    inside `fit` leaves the term out of the step, and the teacher's forward
    pass with it when no remaining term reads the teacher (the step is
    retraced at that epoch, and again after `fit`). A
    pre-training stage (AB's initialisation, `ab`) is a term active in
    `[0, n)` next to a distiller whose cross-entropy starts at epoch `n`
    (`Distiller(student_loss_start_epoch=n)`, `method: kd` option
    `student_loss_start_epoch`). Momentum and decoupled weight decay of the
    optimizer still move the term's part after its window (no gradient
    does).

    Args:
        teacher_layer_name: teacher layer whose output is compared; None = logits.
        student_layer_name: student layer; None = logits.
        name: metric name of the term (default: the class' `metric_name`).
        active_epochs: `(start, end)` epoch window of the term (`end` None:
            open-ended); None = always, the same as `(0, None)`.
    """

    #: Default metric name of the term.
    metric_name = "distillation_loss"
    #: True for losses that read each example's row in the training set
    #: (`context.inputs["index"]`, e.g. a memory bank); distillers then ask for
    #: dict batches with an "index" entry and the CLI feeds them.
    needs_sample_index = False

    def __init__(
        self,
        teacher_layer_name: str | None = None,
        student_layer_name: str | None = None,
        name: str | None = None,
        active_epochs=None,
    ):
        for label, layer in (("teacher_layer_name", teacher_layer_name), ("student_layer_name", student_layer_name)):
            if layer is not None and (not isinstance(layer, str) or not layer):
                raise ValueError(f"`{label}` must be a layer name or None (logits), got {layer!r}.")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.name = name or self.metric_name
        self.active_epochs = check_epoch_window("active_epochs", active_epochs)

    def is_over(self, epoch: int) -> bool:
        """Whether the term's window has closed by the 0-based `epoch`
        (`epoch >= end`): it is 0 from then to the end of training."""
        end = getattr(self, "active_epochs", ALWAYS)[1]
        return end is not None and epoch >= end

    @property
    def teacher_key(self) -> str:
        """Key of the compared teacher output (`"logits"` or the layer name)."""
        return self.teacher_layer_name or LOGITS

    @property
    def student_key(self) -> str:
        return self.student_layer_name or LOGITS

    @property
    def teacher_keys(self) -> tuple[str, ...]:
        """Every teacher output the loss reads, `teacher_key` first. A loss
        that compares several layers of each network (FSP reads two) adds the
        others: distillers tap them in the same forward pass and hand them
        over in `context.teacher_outputs`."""
        return (self.teacher_key,)

    @property
    def student_keys(self) -> tuple[str, ...]:
        """Every student output the loss reads, `student_key` first (see `teacher_keys`)."""
        return (self.student_key,)

    # -- what subclasses provide ------------------------------------------------

    def check_shapes(self, teacher_shape: tuple, student_shape: tuple) -> None:
        """Raise ValueError when these outputs (shapes with batch) cannot work."""

    def check_tapped_shapes(self, teacher_shapes: dict, student_shapes: dict) -> None:
        """Like `check_shapes`, for a loss that reads several outputs:
        `{key: shape with batch}` of every key in `teacher_keys` /
        `student_keys`; called after `check_shapes`."""

    def build_parts(self, teacher_shape: tuple, student_shape: tuple) -> keras.layers.Layer | None:
        """The trainable layer this loss needs, unbuilt or built; None if none."""
        return None

    def build_tapped_parts(self, teacher_shapes: dict, student_shapes: dict) -> keras.layers.Layer | None:
        """What distillers call: the trainable layer from `{key: shape with
        batch}` of every key in `teacher_keys`/`student_keys`. By default
        `build_parts` of the first pair; a loss whose part spans several
        layers (AB's connectors, ReviewKD's fusion) overrides this."""
        return self.build_parts(teacher_shapes[self.teacher_key], student_shapes[self.student_key])

    def compute_loss(self, teacher_output, student_output, context: LossContext):
        raise NotImplementedError

    # -- calling ----------------------------------------------------------------

    def __call__(
        self,
        teacher_output: Any,
        student_output: Any,
        *,
        labels=None,
        step=0,
        epoch=0,
        parts: keras.layers.Layer | None = None,
        training: bool = False,
        inputs=None,
        teacher_outputs: dict | None = None,
        student_outputs: dict | None = None,
        context: LossContext | None = None,
    ):
        """The loss of two tensors (direct use, tests); distillers pass a context.
        `teacher_outputs`/`student_outputs`: the other outputs a loss reading
        several layers needs (`{layer name: tensor}`)."""
        teacher_output = ops.cast(teacher_output, "float32")
        student_output = ops.cast(student_output, "float32")
        if context is None:
            context = LossContext(labels, step, epoch, training, parts, teacher_outputs, student_outputs, inputs)
        value = self.compute_loss(teacher_output, student_output, context)
        if getattr(self, "active_epochs", ALWAYS) == ALWAYS:
            return value
        return in_window(value, context.epoch, *self.active_epochs)

    # -- serialization ----------------------------------------------------------

    def get_config(self) -> dict:
        config = {}
        if self.teacher_layer_name is not None:
            config["teacher_layer_name"] = self.teacher_layer_name
        if self.student_layer_name is not None:
            config["student_layer_name"] = self.student_layer_name
        if self.name != self.metric_name:
            config["name"] = self.name
        if getattr(self, "active_epochs", ALWAYS) != ALWAYS:
            config["active_epochs"] = list(self.active_epochs)
        return config

    @classmethod
    def from_config(cls, config: dict) -> DistillationLoss:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class DeferredStateUpdates:
    """Mixin of a loss part with large non-trainable state (CRD's memory
    banks) that changes it only through `queue_update(variable, index, rows)`.

    Distillers refuse a step whose loss is not finite and then restore every
    non-trainable weight of the student and of the loss parts from a copy
    taken before the step; copying a 60,000-row memory bank twice per step
    would cost more than the step itself. Instead a distiller sets
    `defer_updates` on the part, leaves `deferred_weights` out of that copy
    and calls `apply_deferred_updates(ok)` after deciding: the queued rows
    are written only if the step is applied. Called directly (tests, a
    plain training loop), the part writes at once.
    """

    defer_updates = False

    @property
    def deferred_weights(self) -> list:
        """The variables updated through `queue_update` only."""
        raise NotImplementedError

    def queue_update(self, variable, index, rows) -> None:
        """`variable[index] = rows`: now, or at `apply_deferred_updates` when deferring."""
        if not self.defer_updates:
            variable.value.scatter_update(tf.IndexedSlices(rows, index))
            return
        self._pending().append((variable, index, rows))

    def _pending(self) -> list:
        # Per thread: MirroredStrategy traces each replica's step in its own thread.
        local = self.__dict__.setdefault("_pending_updates", threading.local())
        if not hasattr(local, "updates"):
            local.updates = []
        return local.updates

    def apply_deferred_updates(self, ok) -> None:
        """Writes the queued rows if `ok` (a scalar bool tensor), else keeps the old ones."""
        pending = self._pending()
        updates, pending[:] = list(pending), []
        for variable, index, rows in updates:
            kept = tf.gather(variable.value, index)
            variable.value.scatter_update(tf.IndexedSlices(ops.where(ok, rows, kept), index))


def check_layer_names(key: str, names) -> tuple[str, ...]:
    """A non-empty list of distinct layer names (shallow to deep) as a tuple."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"`{key}` must be a non-empty list of layer names, shallow to deep, got {names!r}.")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"`{key}` must hold layer names, got {name!r} in {list(names)!r}.")
    if len(set(names)) != len(names):
        raise ValueError(f"`{key}` names a layer twice: {list(names)!r}.")
    return tuple(names)


class LayerLevelsLoss(DistillationLoss):
    """Base of a loss that pairs one teacher layer with one student layer per
    level (`teacher_layer_names[i]` with `student_layer_names[i]`, shallow to
    deep; AB, ReviewKD): checks the lists, reads every level in the one
    forward pass (`teacher_keys`/`student_keys`) and serializes them. The
    first level is the base class's `teacher_layer_name`/`student_layer_name`;
    `gather` collects the others from the loss context."""

    #: In the error for missing lists: what the loss reads and an example.
    levels_description = "several layers"
    levels_example = "['stage1', 'stage2', 'stage3']"

    def __init__(self, teacher_layer_names=None, student_layer_names=None, name: str | None = None,
                 active_epochs=None):
        label = type(self).__name__
        if teacher_layer_names is None or student_layer_names is None:
            raise ValueError(
                f"{label} reads {self.levels_description} of each network: give teacher_layer_names and "
                f"student_layer_names, shallow to deep (e.g. {self.levels_example})."
            )
        teachers = check_layer_names("teacher_layer_names", teacher_layer_names)
        students = check_layer_names("student_layer_names", student_layer_names)
        if len(teachers) != len(students):
            raise ValueError(
                f"{label} pairs one teacher layer with one student layer per level; got {len(teachers)} "
                f"teacher_layer_names {list(teachers)} and {len(students)} student_layer_names {list(students)}."
            )
        super().__init__(teacher_layer_name=teachers[0], student_layer_name=students[0], name=name,
                         active_epochs=active_epochs)
        self.teacher_layer_names, self.student_layer_names = teachers, students

    @property
    def teacher_keys(self) -> tuple[str, ...]:
        return self.teacher_layer_names

    @property
    def student_keys(self) -> tuple[str, ...]:
        return self.student_layer_names

    #: A loss with a trainable part over every level names the method that builds it
    #: from `{layer: shape with batch}` of both networks, and what that part is.
    parts_builder: str | None = None
    parts_noun = "parts"

    #: How errors about the levels name the method (e.g. "AB").
    method_label = "This loss"

    def check_level_shape(self, role: str, name: str, shape: tuple) -> None:
        """Raise ValueError when the `role`'s ("teacher"/"student") layer `name` has an unusable shape."""

    def check_level_pairs(self, teachers: list, students: list) -> None:
        """Raise ValueError when a level's teacher and student shapes cannot be paired."""

    def _level_shapes(self, teacher_shapes: dict, student_shapes: dict) -> tuple[list, list]:
        """Every level's (teacher shapes, student shapes), checked; raises naming the layers."""
        levels = []
        for role, shapes, names in (("teacher", teacher_shapes, self.teacher_layer_names),
                                    ("student", student_shapes, self.student_layer_names)):
            found = []
            for name in names:
                if name not in shapes:
                    raise ValueError(f"{self.method_label} reads the {role}'s layer {name!r}, which was not tapped.")
                shape = tuple(shapes[name])
                self.check_level_shape(role, name, shape)
                found.append(shape)
            levels.append(found)
        self.check_level_pairs(*levels)
        return levels[0], levels[1]

    def check_tapped_shapes(self, teacher_shapes, student_shapes):
        self._level_shapes(teacher_shapes, student_shapes)

    def build_parts(self, teacher_shape, student_shape):
        if self.parts_builder is None:
            return None
        raise ValueError(f"{type(self).__name__} builds {self.parts_noun} from every level's shape: use "
                         f"build_tapped_parts(teacher_shapes, student_shapes) or {self.parts_builder}(...) "
                         "with `{layer name: shape}` of both networks.")

    def build_tapped_parts(self, teacher_shapes, student_shapes):
        if self.parts_builder is None:
            return None
        return getattr(self, self.parts_builder)(teacher_shapes, student_shapes)

    def gather(self, primary, outputs: dict, names: tuple[str, ...], role: str) -> list:
        """`[primary, outputs[names[1]], ...]`: every level of one network, float32."""
        found = [primary]
        for name in names[1:]:
            if name not in outputs:
                raise ValueError(f"{type(self).__name__} reads the {role}'s layer {name!r} from the context: pass "
                                 f"{role}_outputs={{{name!r}: ...}} (distillers do).")
            found.append(ops.cast(outputs[name], "float32"))
        return found

    def get_config(self) -> dict:
        config = {"teacher_layer_names": list(self.teacher_layer_names),
                  "student_layer_names": list(self.student_layer_names)}
        base = super().get_config()
        for key in ("name", "active_epochs"):  # the first level is in the lists above
            if key in base:
                config[key] = base[key]
        return config


#: The window of a term that is always active.
ALWAYS = (0, None)


def check_epoch_window(name: str, window) -> tuple[int, int | None]:
    """`(start, end)` from None (always), a pair or a 2-list of integer epochs
    (numpy integers too; `end` None: to the end): `TypeError` for another
    kind, `ValueError` unless `0 <= start` and `end` is None or `> start`."""
    if window is None:
        return ALWAYS
    usage = f"`{name}` must be (start, end) epochs (end None: to the end), got {window!r}."
    if isinstance(window, str) or not isinstance(window, (list, tuple)):
        raise TypeError(usage)
    if len(window) != 2:
        raise ValueError(usage)
    start, end = window
    for label, value in (("start", start), ("end", end)):
        if (value is not None or label == "start") and (isinstance(value, bool) or not isinstance(value, Integral)):
            raise TypeError(f"`{name}` {label} must be an integer epoch, got {value!r}.")
    start, end = int(start), None if end is None else int(end)
    if start < 0:
        raise ValueError(f"`{name}` start must be an integer epoch >= 0, got {start}.")
    if end is not None and end <= start:
        raise ValueError(f"`{name}` needs start < end, got ({start}, {end}).")
    return (start, end)


def epoch_indicator(epoch, start: int, end: int | None = None):
    """1.0 while `start <= epoch < end` (`end` None: no upper bound), else
    0.0; a float32 tensor, so it works under `tf.function` and XLA.

    >>> [float(epoch_indicator(e, 1, 3)) for e in range(4)]
    [0.0, 1.0, 1.0, 0.0]
    """
    epoch = ops.cast(epoch, "float32")
    active = epoch >= float(start)
    if end is not None:
        active = ops.logical_and(active, epoch < float(end))
    return ops.cast(active, "float32")


def in_window(value, epoch, start: int, end: int | None = None):
    """`value` while `start <= epoch < end`, else 0 (zero gradient too: a
    `where`, not a product, so a non-finite value outside the window does
    not leak into the result)."""
    active = epoch_indicator(epoch, start, end) > 0.5
    return ops.where(active, value, ops.zeros_like(value))


def describe(shape) -> str:
    """`(8, 8, 64)` for a shape with batch `(None, 8, 8, 64)`."""
    return str(tuple(shape[1:]))


def check_batched(method: str, teacher_shape, student_shape) -> None:
    """Raises unless both outputs have a batch axis and at least one more
    (relation losses compare samples of the batch; widths may differ)."""
    if len(teacher_shape) < 2 or len(student_shape) < 2:
        raise ValueError(f"{method} needs batched features; got teacher {describe(teacher_shape)} and student "
                         f"{describe(student_shape)}.")


def check_logit_shapes(method: str, teacher_shape, student_shape) -> None:
    """Raises unless both shapes are `(batch, classes)` with the same class count."""
    if len(teacher_shape) != 2 or len(student_shape) != 2 or teacher_shape[-1] != student_shape[-1]:
        raise ValueError(
            f"{method} needs (batch, classes) logits with the same number of classes; got teacher "
            f"{describe(teacher_shape)} and student {describe(student_shape)}."
        )


def standardize_logits(logits):
    """Per-sample z-score of logits, `(z - mean(z)) / (std(z) + 1e-7)`.

    Logit standardization (Sun, Ren, Li, Wang, Cao, "Logit Standardization in
    Knowledge Distillation", CVPR 2024): the student matches the teacher's
    logit *relations* instead of their range. `std` is the sample standard
    deviation (ddof = 1), as in the authors' code (`torch.Tensor.std`).
    """
    mean = ops.mean(logits, axis=-1, keepdims=True)
    classes = ops.cast(ops.shape(logits)[-1], logits.dtype)
    variance = ops.sum(ops.square(logits - mean), axis=-1, keepdims=True) / (classes - 1.0)
    return (logits - mean) / (ops.sqrt(variance) + 1e-7)
