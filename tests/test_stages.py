"""Epoch windows of loss terms (`active_epochs`) and of the student's CE (`student_loss_start_epoch`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from keras_kd import Distiller, losses
from keras_kd.losses.base import check_epoch_window, epoch_indicator
from keras_kd.methods.kd import build_losses

from conftest import CallCounter, tiny_model


@pytest.mark.parametrize("bad,error", [((-1, 2), ValueError), ((3, 3), ValueError), ((2, 1), ValueError),
                                       ((0,), ValueError), ("0,1", TypeError), (5, TypeError),
                                       ((1.5, 2), TypeError), ((None, 2), TypeError), ((True, 2), TypeError),
                                       ((0, 2.0), TypeError)])
def test_bad_windows_are_refused(bad, error):
    with pytest.raises(error, match="active_epochs"):
        losses.SoftTargetLoss(active_epochs=bad)


def test_window_forms():
    assert check_epoch_window("w", None) == (0, None)
    assert check_epoch_window("w", [2, None]) == (2, None)
    assert check_epoch_window("w", (0, 30)) == (0, 30)
    window = check_epoch_window("w", (np.int64(1), np.int32(4)))  # numpy integers, stored as Python ints
    assert window == (1, 4) and all(type(v) is int for v in window)
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
    with pytest.raises(TypeError, match="student_loss_start_epoch"):
        _distiller(student_loss_start_epoch=2.0)
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


# -- idle terms leave the step: no teacher pass once no active term reads it ---------


def _counted_teacher():
    teacher = tiny_model(width=8, name="teacher")
    counter = CallCounter(name="count")
    outputs = counter(teacher.output)
    return keras.Model(teacher.input, outputs, name="teacher"), counter


def _hint(window):
    return losses.HintLoss(teacher_layer_name="stage1", student_layer_name="stage1", active_epochs=window)


class RecordIdleTerms(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.by_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch.append(set(self.model.idle_terms))


@pytest.mark.parametrize("jit_compile", [False, True])
def test_teacher_runs_only_while_a_term_reads_it(batch, jit_compile):
    x, y = batch
    teacher, counter = _counted_teacher()
    distiller = Distiller(teacher=teacher, student=tiny_model(name="student"),
                          distillation_losses=[_hint((0, 1)), losses.SoftTargetLoss(active_epochs=(1, 2))],
                          distillation_loss_weights=[1.0, 1.0], student_loss_weight=1.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), jit_compile=jit_compile)
    counter.count.assign(0.0)  # building the distiller ran the teacher once for its output shapes
    record = RecordIdleTerms()
    # 2 training + 2 validation batches per epoch; epochs 0 and 1 read the teacher, 2 and 3 do not.
    history = distiller.fit(x, y, epochs=4, batch_size=8, validation_data=(x, y), verbose=0,
                            callbacks=[record]).history
    assert float(counter.count) == 8.0
    # Only CLOSED windows leave the step: KD, not yet started at epoch 0, is still computed (masked).
    assert record.by_epoch == [set(), {"hint_loss"}, {"hint_loss", "distillation_loss"},
                               {"hint_loss", "distillation_loss"}]
    assert distiller.idle_terms == frozenset()  # after fit the steps compute every term again
    assert history["hint_loss"][0] > 0 and history["hint_loss"][1:] == [0.0, 0.0, 0.0]
    assert history["distillation_loss"][0] == 0.0 and history["distillation_loss"][1] > 0
    assert history["distillation_loss"][2:] == [0.0, 0.0]
    assert history["val_hint_loss"][0] > 0 and history["val_hint_loss"][1:] == [0.0, 0.0, 0.0]
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)  # a new fit starts at epoch 0: the terms are back
    assert float(counter.count) == 10.0
    distiller.epoch.assign(3)  # outside fit every term is computed, masked by the epoch counter
    logs = distiller.train_on_batch(x[:8], y[:8], return_dict=True)
    assert float(counter.count) == 11.0 and logs["hint_loss"] == 0.0


def test_a_step_left_with_only_idle_terms_still_applies_momentum(batch):
    """CE at weight 0 and KD closed after epoch 0: no active term reaches any
    variable, yet the masked step's zero gradients (momentum) carry on."""
    x, y = batch
    distiller = Distiller(teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"),
                          distillation_losses=[losses.SoftTargetLoss(active_epochs=(0, 1))],
                          distillation_loss_weights=[1.0], student_loss_weight=0.0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    distiller.fit(x, y, epochs=1, batch_size=8, verbose=0)
    before = [ops.convert_to_numpy(v) for v in distiller.student.trainable_variables]
    distiller.fit(x, y, initial_epoch=1, epochs=2, batch_size=8, verbose=0)
    after = [ops.convert_to_numpy(v) for v in distiller.student.trainable_variables]
    assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("always_kd", [False, True], ids=["teacher-skipped", "teacher-kept"])
def test_leaving_idle_terms_out_trains_exactly_like_masking_them(batch, always_kd):
    """Same weights, same updates (momentum included) as the masked step that
    computes every term each epoch; the idle regressor's momentum still moves it."""
    x, y = batch

    def run(skip: bool):
        keras.utils.set_random_seed(3)
        teacher = tiny_model(width=8, name="teacher")
        terms = [_hint((0, 1))] + ([losses.SoftTargetLoss()] if always_kd else [])
        distiller = Distiller(teacher=teacher, student=tiny_model(name="student"), distillation_losses=terms,
                              distillation_loss_weights=[1.0] * len(terms), student_loss_weight=1.0)
        if not skip:
            distiller.idle_terms_at = lambda epoch: frozenset()
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        record = RecordIdleTerms()
        history = distiller.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=[record]).history
        return distiller, history, record.by_epoch

    skipped, skipped_history, skipped_idle = run(skip=True)
    masked, masked_history, masked_idle = run(skip=False)
    assert skipped_idle == [set(), {"hint_loss"}, {"hint_loss"}] and masked_idle == [set()] * 3
    for key, values in masked_history.items():
        np.testing.assert_allclose(skipped_history[key], values, rtol=1e-5, atol=1e-7, err_msg=key)
    for a, b in zip(skipped.trainable_variables, masked.trainable_variables, strict=True):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6,
                                   err_msg=a.path)
    # The student's state matches too (BatchNorm statistics); only the closed term's own part stops
    # tracking its statistics, which nothing reads again.
    closed = {id(v) for v in skipped.loss_parts["hint_loss"].non_trainable_variables}
    kept = [(a, b) for a, b in zip(skipped.non_trainable_variables, masked.non_trainable_variables, strict=True)
            if id(a) not in closed and "optimizer" not in a.path]
    assert any("moving_mean" in a.path for a, _ in kept)
    for a, b in kept:
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6,
                                   err_msg=a.path)
    after_window = [ops.convert_to_numpy(v) for v in skipped.loss_parts["hint_loss"].trainable_variables]
    skipped.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, shuffle=False, verbose=0)
    moved = [ops.convert_to_numpy(v) for v in skipped.loss_parts["hint_loss"].trainable_variables]
    assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(after_window, moved, strict=True))  # momentum, no gradient
