import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def tiny_model(
    num_classes: int = 10,
    input_shape=(28, 28, 1),
    width: int = 4,
    name: str = "tiny",
) -> keras.Model:
    """A small Functional convnet with BatchNorm and zoo-style tap names."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU(name="stage1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="embedding")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


class CallCounter(keras.layers.Layer):
    """Identity layer counting its calls in a variable (compiled steps and XLA count too)."""

    def build(self, input_shape):
        self.count = self.add_weight(shape=(), initializer="zeros", trainable=False, name="count")

    def call(self, inputs):
        self.count.assign_add(1.0)
        return inputs


class SubclassedNet(keras.Model):
    """A subclassed (non-Functional) logits model: no layer taps, no block views."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(10)

    def call(self, inputs, training=False):
        return self.dense(self.flatten(inputs))


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 28, 28, 1)).astype("float32")
    y = (np.arange(16) % 10).astype("int32")
    return x, y


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_standardize(z):
    """Logit standardization (Sun et al., CVPR 2024): per-sample z-score, sample std (ddof 1)."""
    z = np.asarray(z, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def np_soft_target(teacher, student, temperature, standardize=False):
    """Independent numpy reference: T^2 * mean_batch KL(p_t^T || p_s^T), of
    z-scored logits with `standardize`."""
    if standardize:
        teacher, student = np_standardize(teacher), np_standardize(student)
    log_p = np_log_softmax(teacher.astype(np.float64) / temperature)
    log_q = np_log_softmax(student.astype(np.float64) / temperature)
    return temperature**2 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


def np_cross_entropy(labels, logits):
    log_q = np_log_softmax(logits.astype(np.float64))
    return -np.mean(log_q[np.arange(len(labels)), labels])
