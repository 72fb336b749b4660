"""keras_kd/_compat.py against the installed Keras / TensorFlow: every private
API it relies on, checked here so that a release renaming one fails loudly."""

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import _compat
from keras_kd.distillers.base import BaseDistiller

from conftest import SubclassedNet, tiny_model


def test_built_input_shape_of_subclassed_models():
    assert hasattr(SubclassedNet(), "_build_shapes_dict")  # the private attribute read by built_input_shape
    built = SubclassedNet()
    with pytest.warns(UserWarning, match="does not have a `build\\(\\)` method"):  # Keras' own warning
        built.build((None, 28, 28, 1))
    assert _compat.built_input_shape(built) == (28, 28, 1)
    called = SubclassedNet()
    called(np.zeros((2, 12, 12, 3), "float32"))
    assert _compat.built_input_shape(called) == (12, 12, 3)
    assert _compat.built_input_shape(SubclassedNet()) is None  # not built
    assert _compat.built_input_shape(keras.layers.Dense(3)) is None


def test_is_multi_worker_is_false_off_a_cluster():
    assert not _compat.is_multi_worker()
    assert not _compat.is_multi_worker(tf.distribute.get_strategy())
    assert not _compat.is_multi_worker(tf.distribute.OneDeviceStrategy("/cpu:0"))


def test_multi_worker_build_hooks_exist_in_keras():
    """`MultiWorkerBuild` overrides `Model._maybe_symbolic_build` and calls `Model._post_build`."""
    assert callable(getattr(keras.Model, "_maybe_symbolic_build", None)), "Keras renamed Model._maybe_symbolic_build"
    assert callable(getattr(keras.Model, "_post_build", None)), "Keras renamed Model._post_build"
    parameters = inspect.signature(keras.Model._maybe_symbolic_build).parameters
    assert {"iterator", "data_batch"} <= set(parameters), parameters
    assert not [p for p in inspect.signature(keras.Model._post_build).parameters if p != "self"]
    mro = BaseDistiller.__mro__
    assert mro.index(_compat.MultiWorkerBuild) < mro.index(keras.Model)  # the override wins
    # Off a cluster the mixin defers to Keras: the symbolic build still runs.
    from keras_kd import Supervised

    trainer = Supervised(model=tiny_model(name="plain"))
    trainer.compile(optimizer="sgd")
    trainer.fit(np.zeros((4, 28, 28, 1), "float32"), np.arange(4), verbose=0)
    assert trainer.optimizer.built and int(trainer.optimizer.iterations) == 1


def test_strategy_internals_used_by_apply_gradients_if_exist():
    assert callable(tf.__internal__.distribute.strategy_supports_no_merge_call)
    assert callable(tf.distribute.has_strategy)
    assert hasattr(tf.distribute.ReplicaContext, "merge_call") and hasattr(tf.distribute.ReplicaContext, "all_gather")


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
@pytest.mark.parametrize("condition", [True, False])
def test_apply_gradients_if_under_the_default_strategy(mode, condition):
    variable = keras.Variable(np.ones(3, "float32"), name="v")
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build([variable])
    gradient = tf.constant([1.0, 2.0, 3.0])

    def step(flag):
        _compat.apply_gradients_if(optimizer, flag, [gradient], [variable])

    if mode != "eager":
        step = tf.function(step, jit_compile=mode == "xla")
    step(tf.constant(condition))
    momentum = [v for v in optimizer.variables if "momentum" in v.path][0]
    if condition:
        np.testing.assert_allclose(variable.numpy(), 1.0 - 0.1 * gradient.numpy(), rtol=1e-6)
        np.testing.assert_allclose(momentum.numpy(), -0.1 * gradient.numpy(), rtol=1e-6)
        assert int(optimizer.iterations) == 1
    else:  # nothing at all: no step, no momentum, no iteration count
        np.testing.assert_array_equal(variable.numpy(), np.ones(3))
        np.testing.assert_array_equal(momentum.numpy(), np.zeros(3))
        assert int(optimizer.iterations) == 0


MIRRORED = r'''
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras_kd._compat import apply_gradients_if

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
for condition in (True, False):
    with strategy.scope():
        variable = keras.Variable(np.ones(3, "float32"), name="v")
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build([variable])

    @tf.function
    def step(flag):
        def replica_fn(flag):
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            gradient = tf.cast(replica + 1, "float32") * tf.constant([1.0, 2.0, 3.0])  # replica-specific
            apply_gradients_if(optimizer, flag, [gradient], [variable])

        strategy.run(replica_fn, args=(flag,))

    step(tf.constant(condition))
    values = [np.asarray(v).tolist() for v in strategy.experimental_local_results(variable.value)]
    print("condition", condition, "values", values, "iterations", int(optimizer.iterations.numpy()))
'''


def test_apply_gradients_if_under_mirrored_strategy():
    # Logical devices must be configured before TensorFlow initialises: a fresh process.
    result = subprocess.run(
        [sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("condition")}
    # True: each replica's own gradient, summed (1 + 2 = 3 times the base gradient), on both copies.
    applied = [round(1.0 - 0.1 * 3 * g, 5) for g in (1.0, 2.0, 3.0)]
    values = ast.literal_eval(lines["True"].split("values ")[1].split(" iterations")[0])
    np.testing.assert_allclose(values, [applied, applied], rtol=1e-5)
    assert lines["True"].endswith("iterations 1")
    assert lines["False"] == "condition False values [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]] iterations 0"


def test_resumed_epoch_reads_backup_and_restore(tmp_path):
    assert _compat.resumed_epoch(tmp_path / "none") == 0
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((4, 2), "float32"), np.zeros((4, 1), "float32")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "b"))])
    assert _compat.resumed_epoch(tmp_path / "b") == 0  # a finished fit deletes its backup

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "c"))
    try:
        model.fit(x, y, epochs=5, verbose=0, callbacks=[backup, Stop()])
    except KeyboardInterrupt:
        pass
    assert _compat.resumed_epoch(tmp_path / "c") == 2
    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "c"))])
    assert len(history.history["loss"]) == 3  # Keras resumed where resumed_epoch said
