"""CC (Peng et al., ICCV 2019; the CRD benchmark's variant) against numpy."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller, losses

from conftest import tiny_model


def np_cc(teacher, student, part):
    e_t = teacher.reshape(len(teacher), -1) @ np.asarray(part.teacher_embed.kernel) + np.asarray(part.teacher_embed.bias)
    e_s = student.reshape(len(student), -1) @ np.asarray(part.student_embed.kernel) + np.asarray(part.student_embed.bias)
    delta = np.abs(e_s - e_t)
    return np.mean([delta[i] @ delta[i + 1] for i in range(len(delta) - 1)])


def test_cc_matches_numpy():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(5, 2, 2, 4)), rng.normal(size=(5, 6))
    loss = losses.CorrelationCongruenceLoss(dim=7)
    part = loss.build_parts((None, 2, 2, 4), (None, 6))
    np.testing.assert_allclose(float(loss(teacher.astype("float32"), student.astype("float32"), parts=part)),
                               np_cc(teacher, student, part), rtol=1e-4)
    with pytest.raises(ValueError, match="`dim` must be a positive integer"):
        losses.CorrelationCongruenceLoss(dim=0)


def test_cc_embeddings_train_and_stay_out_of_the_student(tmp_path):
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    distiller = Distiller(teacher=teacher, student=student, student_loss_weight=1.0,
                          distillation_losses=losses.get("cc", teacher_layer_name="embedding",
                                                         student_layer_name="embedding"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    part = distiller.loss_parts["cc_loss"]
    before = np.asarray(part.teacher_embed.kernel).copy()
    x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype("float32")
    distiller.fit(x, np.arange(16) % 10, batch_size=8, epochs=1, verbose=0)
    assert not np.allclose(np.asarray(part.teacher_embed.kernel), before)  # the teacher-side map is trained
    assert len(student.weights) == len(tiny_model(width=4, name="s2").weights)
    distiller.save(tmp_path / "cc.keras")
    loaded = keras.models.load_model(tmp_path / "cc.keras")
    np.testing.assert_allclose(np.asarray(loaded.loss_parts["cc_loss"].teacher_embed.kernel),
                               np.asarray(part.teacher_embed.kernel))
