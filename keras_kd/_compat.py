"""The ONLY place keras_kd touches private Keras / TensorFlow API.

Each function names the behaviour it relies on and why; `tests/test_compat.py`
checks every one of them against the installed versions, so a release that
changes them fails there, loudly, instead of breaking every distiller.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf


def built_input_shape(model: keras.Model) -> tuple | None:
    """The input shape (without batch) a subclassed model was built with, or None.

    Keras 3 keeps the shapes given to `Model.build` only in the private
    `_build_shapes_dict`; there is no public accessor for subclassed models.
    """
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        shape = next(iter(shapes.values()))
        if shape is not None and len(shape) > 1:
            return tuple(shape[1:])
    return None


def is_multi_worker(strategy=None) -> bool:
    """True for a MultiWorkerMirroredStrategy that spans several workers
    (public cluster-resolver API)."""
    strategy = strategy or tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    if resolver is None:
        return False
    spec = resolver.cluster_spec()
    return sum(len(spec.task_indices(job)) for job in spec.jobs) > 1


class MultiWorkerBuild:
    """Mixin for `keras.Model` subclasses whose variables all exist after
    `__init__`: under a multi-worker strategy `fit` skips Keras' symbolic
    build and only builds the optimizer.

    Keras 3.15 `fit` first runs `Model._maybe_symbolic_build`, which reduces a
    per-replica batch and fails under MultiWorkerMirroredStrategy
    (keras-team/keras#20585). `_post_build` is what Keras itself calls after
    a successful symbolic build.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if not is_multi_worker(self.distribute_strategy):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
            return
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        self._post_build()


def apply_gradients_if(optimizer, condition, gradients, variables) -> None:
    """`optimizer.apply_gradients(...)` when the boolean tensor `condition` holds,
    otherwise nothing at all (no step, no momentum update, no iteration count).

    A `tf.cond` whose branch calls the optimizer is only legal in a
    cross-replica context when the strategy uses `merge_call` (the same
    pattern as Keras' own `LossScaleOptimizer._tf_apply`); whether it does is
    only exposed through `tf.__internal__`. `condition` must be equal on
    every replica (the caller all-reduces it).
    """
    gradients, variables = list(gradients), list(variables)

    def apply(gradients, variables):
        optimizer.apply_gradients(list(zip(gradients, variables, strict=True)))

    if tf.__internal__.distribute.strategy_supports_no_merge_call() or not tf.distribute.has_strategy():
        tf.cond(condition, lambda: _noop_after(lambda: apply(gradients, variables)), tf.no_op)
        return

    # The gradients travel through `merge_call` (as PerReplica values) so that
    # each replica applies its own; a closure would see one replica's only.
    def cross_replica(distribution, condition, gradients, variables):
        local = distribution.experimental_local_results(condition)[0]

        def apply_everywhere():
            distribution.extended.call_for_each_replica(apply, args=(gradients, variables))

        tf.cond(local, lambda: _noop_after(apply_everywhere), tf.no_op)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(condition, gradients, variables))


def _noop_after(function):
    function()
    return tf.no_op()


def resumed_epoch(backup_dir) -> int:
    """The epoch `keras.callbacks.BackupAndRestore(backup_dir)` will resume at
    (0 without a backup).

    The callback sets the private `Model._initial_epoch` from the `epoch`
    entry of its `training_metadata.json`; a data pipeline whose views depend
    on the epoch must start there too, before `fit` runs.
    """
    metadata = Path(backup_dir) / "training_metadata.json"
    if not metadata.is_file():
        return 0
    return int(json.loads(metadata.read_text())["epoch"])
