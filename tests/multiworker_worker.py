"""One worker of the 2-process MultiWorkerMirroredStrategy test (TF_CONFIG set by the test)."""

import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()

import keras  # noqa: E402

from keras_kd import Distiller, losses  # noqa: E402


def bn_free(width, name):
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="stage1")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


with strategy.scope():
    keras.utils.set_random_seed(0)
    distiller = Distiller(
        teacher=bn_free(8, "teacher"), student=bn_free(4, "student"),
        distillation_losses=[
            losses.SoftTargetLoss(4.0),
            losses.AttentionTransferLoss(teacher_layer_name="stage1", student_layer_name="stage1"),
        ],
        distillation_loss_weights=[0.9, 10.0],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
    distiller.optimizer.build(distiller.trainable_variables)

rng = np.random.default_rng(0)
x = rng.normal(size=(64, 12, 12, 1)).astype("float32")
y = (np.arange(64) % 10).astype("int32")
ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
history = distiller.fit(ds, epochs=2, verbose=0).history
weights = np.concatenate([w.numpy().ravel() for w in distiller.student.weights])
np.save(sys.argv[1], weights)
print("loss", history["loss"], "iterations", int(distiller.optimizer.iterations.numpy()))
