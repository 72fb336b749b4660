import numpy as np
import pytest
import tensorflow as tf

from keras_kd.losses import SoftTargetLoss

from conftest import np_soft_target


@pytest.mark.parametrize("shape", [(1, 3), (7, 10), (32, 100)])
@pytest.mark.parametrize("temperature", [1.0, 4.0, 0.5])
def test_soft_target_matches_numpy(shape, temperature):
    rng = np.random.default_rng(shape[0])
    teacher = (3 * rng.normal(size=shape)).astype("float32")
    student = (3 * rng.normal(size=shape)).astype("float32")
    value = float(SoftTargetLoss(temperature)(teacher, student))
    np.testing.assert_allclose(value, np_soft_target(teacher, student, temperature), rtol=1e-5, atol=1e-6)


def test_soft_target_hand_computed_case():
    # T = 1, teacher probs (0.5, 0.5), student probs (e/(1+e), 1/(1+e)).
    teacher = np.array([[0.0, 0.0]], "float32")
    student = np.array([[1.0, 0.0]], "float32")
    q1 = np.e / (1 + np.e)
    expected = 0.5 * np.log(0.5 / q1) + 0.5 * np.log(0.5 / (1 - q1))
    np.testing.assert_allclose(float(SoftTargetLoss(1.0)(teacher, student)), expected, rtol=1e-6)


def test_soft_target_zero_when_equal_and_t_squared_scaling():
    z = np.random.default_rng(1).normal(size=(4, 5)).astype("float32")
    assert abs(float(SoftTargetLoss(3.0)(z, z))) < 1e-6
    # Same softened distributions at different T: the value scales with T^2.
    a, b = z, np.roll(z, 1, axis=-1)
    ratio = float(SoftTargetLoss(2.0)(2 * a, 2 * b)) / float(SoftTargetLoss(1.0)(a, b))
    np.testing.assert_allclose(ratio, 4.0, rtol=1e-5)


def test_soft_target_gradient_only_reaches_student():
    teacher = tf.Variable(np.random.default_rng(2).normal(size=(4, 6)).astype("float32"))
    student = tf.Variable(np.zeros((4, 6), "float32"))
    with tf.GradientTape(persistent=True) as tape:
        value = SoftTargetLoss(4.0)(teacher, student)
    assert tape.gradient(value, teacher) is None
    grad = tape.gradient(value, student).numpy()
    # d/dz_s of T^2 KL = T * (q - p) / batch
    p = tf.nn.softmax(teacher / 4.0).numpy()
    q = tf.nn.softmax(student / 4.0).numpy()
    np.testing.assert_allclose(grad, 4.0 * (q - p) / 4, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_soft_target_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetLoss(bad)


def test_soft_target_rejects_class_mismatch():
    with pytest.raises(ValueError, match="same number of classes"):
        SoftTargetLoss()(np.zeros((2, 10), "float32"), np.zeros((2, 5), "float32"))


def test_soft_target_config_round_trip():
    loss = SoftTargetLoss(2.5)
    assert SoftTargetLoss.from_config(loss.get_config()).temperature == 2.5
