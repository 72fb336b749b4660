"""Run by test_distribute.py in a fresh process: one training step on 2
logical CPUs under MirroredStrategy must equal the same step on one device,
for every trainer whose terms are batch means (Distiller + AT, Supervised,
EnsembleDistiller, OnlineEnsembleDistiller). BatchNorm-free models, so
per-replica batch statistics cannot differ."""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd import (  # noqa: E402
    Distiller,
    EnsembleDistiller,
    FeatureTerm,
    OnlineEnsembleDistiller,
    Supervised,
    losses,
)
from keras_kd.models.multibranch import BranchEnsemble  # noqa: E402
from keras_kd.models.online import online_ensemble  # noqa: E402


def bn_free(width, name):
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stage1")(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def bn_free_branches(count):
    """A multi-branch student with the layer names EnsembleDistiller reads."""
    inputs = keras.Input((12, 12, 1))
    stem = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="shared_stem")(inputs)
    logits = []
    for i in range(1, count + 1):
        x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name=f"branch{i}_conv")(stem)
        x = keras.layers.GlobalAveragePooling2D(name=f"branch{i}_embedding")(x)
        logits.append(keras.layers.Dense(10, name=f"branch{i}")(x))
    return keras.Model(inputs, BranchEnsemble(name="ensemble")(logits), name="student")


def bn_free_scaled(width_ratio):
    """The layer names online_ensemble reads; stage widths scale with the ratio."""
    width = max(1, int(8 * width_ratio))
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stem")(inputs)
    for stage, stride in (("stage1", 1), ("stage2", 2), ("stage3", 1)):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", activation="relu", name=stage)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def make_distiller():
    student = bn_free(4, "student")
    distiller = Distiller(
        student, bn_free(8, "teacher"), temperature=3.0, alpha=0.7,
        features=[FeatureTerm("stage2", "stage2", losses.AttentionTransferLoss(), 50.0)],
    )
    return distiller, student


def make_supervised():
    student = bn_free(4, "student")
    return Supervised(student), student


def make_ensemble():
    student = bn_free_branches(2)
    teachers = [bn_free(8, "teacher_a"), bn_free(4, "teacher_b")]  # 8 != 4: one Dense adapter
    return EnsembleDistiller(student, teachers, temperature=[2.0, 3.0], alpha=0.5, beta=2.0), student


def make_online():
    network = online_ensemble(bn_free_scaled, (12, 12, 1), 10, num_students=3)
    return OnlineEnsembleDistiller(network), network


FACTORIES = (make_distiller, make_supervised, make_ensemble, make_online)


def one_step(strategy, x, y, factory):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        distiller, student = factory()
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    initial = [w.numpy() for w in student.weights]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    logs = distiller.fit(ds, epochs=1, verbose=0).history
    moved = max(float(np.abs(w.numpy() - i).max()) for w, i in zip(student.weights, initial, strict=True))
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    trained = [w.numpy() for w in distiller.trainable_variables]  # adapters included
    return trained, logs


rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12, 12, 1)).astype("float32")
y = (np.arange(32) % 10).astype("int32")
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ok = True
for factory in FACTORIES:
    single, single_logs = one_step(tf.distribute.get_strategy(), x, y, factory)
    mirrored, mirrored_logs = one_step(mirrored_strategy, x, y, factory)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored, strict=True))
    loss_gap = abs(single_logs["loss"][0] - mirrored_logs["loss"][0])
    print(f"{factory.__name__}: max weight difference {worst:.3g}, loss difference {loss_gap:.3g}")
    ok = ok and worst < 1e-5 and loss_gap < 1e-4
sys.exit(0 if ok else 1)
