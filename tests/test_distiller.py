import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, data
from keras_kd.distillers.base import LabelRangeError, NonFiniteLossError
from keras_kd.losses import SoftTargetLoss

from conftest import SubclassedNet, np_cross_entropy, np_soft_target, tiny_model


def make_distiller(temperature=4.0, weight=0.9, student_loss_weight=0.1, **kwargs):
    teacher = tiny_model(width=8, name="teacher")
    student = tiny_model(width=4, name="student")
    return Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=[SoftTargetLoss(temperature)],
        distillation_loss_weights=[weight],
        student_loss_weight=student_loss_weight,
        **kwargs,
    )


def test_reported_losses_match_numpy(batch):
    x, y = batch
    distiller = make_distiller(temperature=3.0, weight=0.7, student_loss_weight=0.3)
    distiller.compile(optimizer="sgd")
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    t = distiller.teacher(x, training=False).numpy()
    s = distiller.student(x, training=False).numpy()
    ce, kd = np_cross_entropy(y, s), np_soft_target(t, s, 3.0)
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], kd, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.3 * ce + 0.7 * kd, rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], np.mean(s.argmax(-1) == y))


def test_default_objective_is_kd_at_0_9_and_ce_at_0_1(batch):
    x, y = batch
    distiller = Distiller(teacher=tiny_model(width=8, name="teacher"), student=tiny_model(name="student"))
    assert [type(loss) for loss in distiller.distillation_losses] == [SoftTargetLoss]
    assert distiller.distillation_losses[0].temperature == 4.0
    assert distiller.distillation_loss_weights == [0.9] and distiller.student_loss_weight == 0.1
    distiller.compile(optimizer="sgd")
    logs = distiller.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    t = distiller.teacher(x, training=False).numpy()
    s = distiller.student(x, training=False).numpy()
    expected = 0.1 * np_cross_entropy(y, s) + 0.9 * np_soft_target(t, s, 4.0)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)


def test_one_step_gradient_matches_reference(batch):
    x, y = batch
    distiller = make_distiller(temperature=4.0, weight=0.9, student_loss_weight=0.5)
    student, teacher = distiller.student, distiller.teacher
    before = [v.numpy().copy() for v in student.trainable_variables]
    # Independent reference with raw tf.nn ops on a clone of the student.
    clone = keras.models.clone_model(student)
    clone.set_weights(student.get_weights())
    with tf.GradientTape() as tape:
        z_s = clone(x, training=True)
        z_t = teacher(x, training=False)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, z_s))
        kl = tf.reduce_sum(
            tf.nn.softmax(z_t / 4) * (tf.nn.log_softmax(z_t / 4) - tf.nn.log_softmax(z_s / 4)), -1
        )
        reference = 0.5 * ce + 0.9 * 16.0 * tf.reduce_mean(kl)
    grads = tape.gradient(reference, clone.trainable_variables)
    distiller.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    distiller.train_on_batch(x, y)
    for old, new, grad in zip(before, student.trainable_variables, grads, strict=True):
        np.testing.assert_allclose(new.numpy(), old - 0.1 * grad.numpy(), atol=1e-5)


def test_teacher_is_frozen_and_student_trains():
    distiller = make_distiller()
    teacher_before = [w.numpy().copy() for w in distiller.teacher.weights]
    student_before = [w.numpy().copy() for w in distiller.student.weights]
    assert {id(v) for v in distiller.trainable_variables} == {
        id(v) for v in distiller.student.trainable_variables
    }
    distiller.compile(optimizer="adam")
    distiller.fit(data.load("synthetic", "train", 100), epochs=1, verbose=0)
    for before, after in zip(teacher_before, distiller.teacher.weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())  # incl. BN moving stats
    changed = [not np.array_equal(b, a.numpy()) for b, a in zip(student_before, distiller.student.weights, strict=True)]
    assert all(changed)


def test_student_loss_decreases_and_metrics_reach_history():
    # Global pooling cannot see the synthetic class templates; a linear student can.
    student = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    distiller = Distiller(
        teacher=tiny_model(width=8, name="teacher"),
        student=student,
        distillation_losses=[SoftTargetLoss(4.0)],
        distillation_loss_weights=[0.5],
        student_loss_weight=0.5,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    train = data.load("synthetic", "train", 50)
    test = data.load("synthetic", "test", 100)
    history = distiller.fit(train, epochs=6, validation_data=test, verbose=0).history
    assert history["student_loss"][-1] < 0.7 * history["student_loss"][0]
    assert {"loss", "student_loss", "distillation_loss", "accuracy", "val_loss",
            "val_student_loss", "val_distillation_loss", "val_accuracy"} <= set(history)


def test_keras_round_trip_keeps_predictions_and_optimizer(tmp_path, batch):
    x, y = batch
    distiller = make_distiller(temperature=2.0, weight=0.6, student_loss_weight=0.4)
    distiller.compile(optimizer="adam", metrics=["accuracy"])
    distiller.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert isinstance(loaded, Distiller)
    (loss,) = loaded.distillation_losses
    assert isinstance(loss, SoftTargetLoss) and loss.temperature == 2.0
    assert loaded.distillation_loss_weights == [0.6]
    assert loaded.student_loss_weight == pytest.approx(0.4)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), distiller.predict(x, verbose=0))
    assert int(loaded.optimizer.iterations) == int(distiller.optimizer.iterations) == 4
    assert len(loaded.optimizer.variables) == len(distiller.optimizer.variables)
    for a, b in zip(loaded.optimizer.variables, distiller.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not loaded.teacher.trainable
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)  # training continues
    assert int(loaded.optimizer.iterations) == 6
    distiller.student.save(tmp_path / "student.keras")
    student = keras.models.load_model(tmp_path / "student.keras")
    np.testing.assert_array_equal(student.predict(x, verbose=0), distiller.predict(x, verbose=0))


def test_sequential_and_subclassed_students(batch):
    x, y = batch
    teacher = tiny_model(width=8, name="teacher")
    sequential = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )

    for student in (sequential, SubclassedNet()):
        distiller = Distiller(teacher=teacher, student=student)
        distiller.compile(optimizer="sgd")
        logs = distiller.fit(x, y, epochs=1, verbose=0).history
        assert np.isfinite(logs["loss"][0])
        np.testing.assert_allclose(distiller.predict(x, verbose=0), student(x), atol=1e-6)


def test_bad_inputs_raise_clear_errors(batch):
    x, y = batch
    teacher, student = tiny_model(name="teacher"), tiny_model(name="student")
    with pytest.raises(ValueError, match="predicts 10 classes but student 'student5' predicts 5"):
        Distiller(teacher=teacher, student=tiny_model(5, name="student5"))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(28, 28, 1\) but student"):
        Distiller(teacher=teacher, student=tiny_model(input_shape=(32, 32, 1), name="wide"))

    class Unbuilt(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="teacher 'unbuilt' is not built"):
        Distiller(teacher=Unbuilt(name="unbuilt"), student=student)
    with pytest.raises(TypeError, match="teacher must be a keras.Model"):
        Distiller(teacher=lambda v: v, student=student)
    with pytest.raises(TypeError, match="needs both `teacher=` and `student=`"):
        Distiller(student=student)
    for make, message in (
        (lambda: SoftTargetLoss(0), "temperature"),
        (lambda: SoftTargetLoss(-2.0), "temperature"),
        (lambda: Distiller(teacher=teacher, student=student, distillation_loss_weights=[-0.1]),
         "weight of distillation_loss"),
        (lambda: Distiller(teacher=teacher, student=student, distillation_loss_weights=[0.0],
                           student_loss_weight=0.0), "All loss weights"),
        (lambda: Distiller(teacher=teacher, student=student, distillation_loss_weights=[float("nan")]),
         "weight of distillation_loss"),
        (lambda: Distiller(teacher=teacher, student=student, student_loss_weight=-1.0), "student_loss_weight"),
        (lambda: Distiller(teacher=teacher, student=student, distillation_losses=[SoftTargetLoss()],
                           distillation_loss_weights=[1.0, 2.0]), "one weight per loss"),
        (lambda: Distiller(teacher=teacher, student=student,
                           distillation_losses=[SoftTargetLoss(), SoftTargetLoss(2.0)]), "share the metric name"),
    ):
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(TypeError, match="DistillationLoss"):
        Distiller(teacher=teacher, student=student, distillation_losses=["kl_divergence"])
    distiller = Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd")
    with pytest.raises(LabelRangeError, match=r"label 12 at step 0 is outside \[0, 10\)"):
        distiller.fit(x, np.full(len(x), 12), verbose=0)
    with pytest.raises(LabelRangeError, match="label -1"):
        distiller.fit(x, np.full(len(x), -1), verbose=0)
    with pytest.raises(ValueError, match="one-hot labels are not supported"):
        distiller.fit(x, np.eye(10)[y], verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        distiller.fit(x, y, sample_weight=np.ones(len(x)), verbose=0)
    bad = np.full_like(x, np.nan)
    with pytest.raises(NonFiniteLossError, match=r"loss term (student|distillation)_loss is not finite \(NaN/Inf\) at step"):
        distiller.fit(bad, y, verbose=0)
    with pytest.raises(ValueError, match="without `loss=`"):
        Distiller(teacher=teacher, student=student).compile(optimizer="sgd", loss="mse")


def test_supervised_trainer_round_trip_in_safe_mode(tmp_path, batch):
    from keras_kd import Supervised

    x, y = batch
    trainer = Supervised(model=tiny_model(name="plain"))
    trainer.compile(optimizer="adam")
    logs = trainer.evaluate(x, y, batch_size=len(x), return_dict=True, verbose=0)
    s = trainer.student(x, training=False).numpy()
    np.testing.assert_allclose(logs["ce_loss"], np_cross_entropy(y, s), rtol=1e-5)
    trainer.fit(x, y, epochs=1, verbose=0)
    trainer.save(tmp_path / "t.keras")
    loaded = keras.models.load_model(tmp_path / "t.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), trainer.predict(x, verbose=0))
    assert int(loaded.optimizer.iterations) == 1
    for a, b in zip(loaded.optimizer.variables, trainer.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
