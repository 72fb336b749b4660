"""Epoch windows of loss terms (`active_epochs`) and of the student's CE (`student_loss_start_epoch`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_kd import Distiller, losses
from keras_kd.losses.base import check_epoch_window, epoch_indicator
from keras_kd.methods.kd import build_losses

from conftest import tiny_model


@pytest.mark.parametrize("bad", [(-1, 2), (3, 3), (2, 1), "0,1", (0,), (1.5, 2), (None, 2), (True, 2)])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ValueError, match="active_epochs"):
        losses.SoftTargetLoss(active_epochs=bad)


def test_window_forms():
    assert check_epoch_window("w", None) == (0, None)
    assert check_epoch_window("w", [2, None]) == (2, None)
    assert check_epoch_window("w", (0, 30)) == (0, 30)
    assert [float(epoch_indicator(e, 2)) for e in range(4)] == [0.0, 0.0, 1.0, 1.0]


def test_term_is_zero_with_zero_gradient_outside_its_window_under_tf_function():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(4, 10)).astype("float32")
    student = tf.Variable(rng.normal(size=(4, 10)).astype("float32"))
    windowed = losses.SoftTargetLoss(temperature=4.0, active_epochs=(1, 3))
    plain = losses.SoftTargetLoss(temperature=4.0)
    epoch = tf.Variable(0, dtype="int64")

    @tf.function(jit_compile=True)
    def value_and_grad():
        with tf.GradientTape() as tape:
            value = windowed(teacher, student, epoch=epoch)
        return value, tape.gradient(value, student)

    with tf.GradientTape() as tape:
        full = plain(teacher, student)
    full_grad = tape.gradient(full, student)
    for e, active in ((0, False), (1, True), (2, True), (3, False), (7, False)):
        epoch.assign(e)
        value, grad = value_and_grad()
        if active:
            np.testing.assert_allclose(float(value), float(full), rtol=1e-5)
            np.testing.assert_allclose(ops.convert_to_numpy(grad), ops.convert_to_numpy(full_grad), rtol=1e-4,
                                       atol=1e-7)
        else:
            assert float(value) == 0.0
            assert not np.any(ops.convert_to_numpy(grad))


def test_window_serialization_round_trip_and_default_config_unchanged():
    assert "active_epochs" not in losses.SoftTargetLoss().get_config()
    loss = losses.HintLoss(teacher_layer_name="stage1", student_layer_name="stage1", active_epochs=(0, 5))
    assert loss.get_config()["active_epochs"] == [0, 5]
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert rebuilt.active_epochs == (0, 5) and rebuilt.get_config() == loss.get_config()
    built, _ = build_losses([{"name": "kd", "weight": 1.0, "active_epochs": [3, None]}])
    assert built[0].active_epochs == (3, None)


def _distiller(**kwargs):
    return Distiller(teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"), **kwargs)


def test_student_loss_start_epoch_is_validated_and_serialized():
    with pytest.raises(ValueError, match="student_loss_start_epoch"):
        _distiller(student_loss_start_epoch=-1)
    assert "student_loss_start_epoch" not in _distiller().get_config()
    distiller = _distiller(student_loss_start_epoch=4)
    config = distiller.get_config()
    assert config["student_loss_start_epoch"] == 4
    assert Distiller.from_config(config).student_loss_start_epoch == 4


def test_fit_over_two_epochs_switches_the_terms(batch):
    x, y = batch
    distiller = _distiller(
        distillation_losses=[losses.SoftTargetLoss(temperature=4.0, active_epochs=[0, 1])],
        distillation_loss_weights=[1.0], student_loss_weight=1.0, student_loss_start_epoch=1)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    history = distiller.fit(x, y, epochs=2, batch_size=8, verbose=0).history
    assert history["distillation_loss"][0] > 0 and history["distillation_loss"][1] == 0.0
    assert history["student_loss"][0] == 0.0 and history["student_loss"][1] > 0
    np.testing.assert_allclose(history["loss"], [history["distillation_loss"][0], history["student_loss"][1]],
                               rtol=1e-5)


def test_kd_method_exposes_the_student_window():
    from keras_kd import registry

    options = registry.method("kd").options
    assert options["student_loss_start_epoch"].default == 0
