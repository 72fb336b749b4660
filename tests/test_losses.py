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


def test_soft_target_gradients_match_analytic_values():
    teacher = tf.Variable(np.random.default_rng(2).normal(size=(4, 6)).astype("float32"))
    student = tf.Variable(np.zeros((4, 6), "float32"))
    with tf.GradientTape(persistent=True) as tape:
        value = SoftTargetLoss(4.0)(teacher, student)
        stopped = SoftTargetLoss(4.0)(tf.stop_gradient(teacher), student)
    grad = tape.gradient(value, student).numpy()
    # d/dz_s of T^2 KL = T * (q - p) / batch
    p = tf.nn.softmax(teacher / 4.0).numpy().astype(np.float64)
    q = tf.nn.softmax(student / 4.0).numpy().astype(np.float64)
    np.testing.assert_allclose(grad, 4.0 * (q - p) / 4, rtol=1e-5, atol=1e-7)
    # The loss does not stop gradients itself (SFTN trains its teacher through it):
    # d/dz_t of T^2 KL = T * p * (log p - log q - KL) / batch. Frozen-teacher
    # distillers pass stop_gradient outputs instead.
    log_ratio = np.log(p) - np.log(q)
    kl = np.sum(p * log_ratio, axis=-1, keepdims=True)
    np.testing.assert_allclose(tape.gradient(value, teacher).numpy(), 4.0 * p * (log_ratio - kl) / 4,
                               rtol=1e-4, atol=1e-7)
    assert tape.gradient(stopped, teacher) is None


@pytest.mark.parametrize("bad", [0, -1.0, float("nan")])
def test_soft_target_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        SoftTargetLoss(bad)


def test_soft_target_rejects_class_mismatch():
    with pytest.raises(ValueError, match="same number of classes"):
        SoftTargetLoss()(np.zeros((2, 10), "float32"), np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match=r"same number of classes; got teacher \(10,\) and student \(5,\)"):
        SoftTargetLoss().check_shapes((None, 10), (None, 5))
    with pytest.raises(ValueError, match=r"\(batch, classes\) logits"):
        SoftTargetLoss().check_shapes((None, 4, 4, 10), (None, 10))


def test_soft_target_config_round_trip_and_registry():
    import keras

    from keras_kd import losses

    loss = SoftTargetLoss(2.5)
    assert SoftTargetLoss.from_config(loss.get_config()).temperature == 2.5
    named = SoftTargetLoss(3.0, teacher_layer_name="head", student_layer_name="branch1", name="kd_branch1")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(named))
    assert isinstance(again, SoftTargetLoss)
    assert (again.temperature, again.teacher_key, again.student_key, again.name) == (3.0, "head", "branch1", "kd_branch1")
    assert repr(named).startswith("SoftTargetLoss(")
    kd = losses.get("kd", temperature=4)
    assert isinstance(kd, SoftTargetLoss) and kd.temperature == 4.0 and kd.teacher_key == kd.student_key == "logits"
    assert {"kd", "hint", "at", "lp", "embedding", "feature"} <= set(losses.loss_names())
    for name, cls in (("hint", losses.HintLoss), ("at", losses.AttentionTransferLoss),
                      ("lp", losses.LocalityPreservingLoss), ("embedding", losses.EmbeddingMimicryLoss),
                      ("feature", losses.FeatureLoss)):
        assert type(losses.get(name)) is cls
    with pytest.raises(ValueError, match="kd2"):
        losses.get("kd2")
    with pytest.raises(ValueError, match="Bad arguments for loss 'kd'"):
        losses.get("kd", temprature=4)
