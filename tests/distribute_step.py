"""Run by test_distribute.py in a fresh process: one Distiller step on 2
logical CPUs under MirroredStrategy must equal the same step on one device."""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd import Distiller, FeatureTerm, Supervised, losses  # noqa: E402


def bn_free(width, name):
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stage1")(inputs)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", activation="relu", name="stage2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def make_distiller(student, teacher):
    return Distiller(
        student, teacher, temperature=3.0, alpha=0.7,
        features=[FeatureTerm("stage2", "stage2", losses.AttentionTransferLoss(), 50.0)],
    )


def make_supervised(student, teacher):
    return Supervised(student)


def one_step(strategy, x, y, factory):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher, student = bn_free(8, "teacher"), bn_free(4, "student")
        distiller = factory(student, teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    initial = [w.numpy() for w in student.weights]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    logs = distiller.fit(ds, epochs=1, verbose=0).history
    moved = max(float(np.abs(w.numpy() - i).max()) for w, i in zip(student.weights, initial, strict=True))
    assert moved > 1e-4, "the step must change the weights for the comparison to mean anything"
    return [w.numpy() for w in student.weights], logs


rng = np.random.default_rng(0)
x = rng.normal(size=(32, 12, 12, 1)).astype("float32")
y = (np.arange(32) % 10).astype("int32")
mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
ok = True
for factory in (make_distiller, make_supervised):
    single, single_logs = one_step(tf.distribute.get_strategy(), x, y, factory)
    mirrored, mirrored_logs = one_step(mirrored_strategy, x, y, factory)
    worst = max(float(np.abs(a - b).max()) for a, b in zip(single, mirrored, strict=True))
    loss_gap = abs(single_logs["loss"][0] - mirrored_logs["loss"][0])
    print(f"{factory.__name__}: max weight difference {worst:.3g}, loss difference {loss_gap:.3g}")
    ok = ok and worst < 1e-5 and loss_gap < 1e-4
sys.exit(0 if ok else 1)
