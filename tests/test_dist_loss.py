"""DIST (Huang et al., NeurIPS 2022) against a numpy reference written from the paper."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller, losses

from conftest import tiny_model


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-8)


def np_dist(teacher, student, beta, gamma, tau):
    p_t, p_s = np_softmax(teacher / tau), np_softmax(student / tau)
    inter = 1 - np.mean([np_pearson(p_s[i], p_t[i]) for i in range(len(p_s))])
    intra = 1 - np.mean([np_pearson(p_s[:, c], p_t[:, c]) for c in range(p_s.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta, gamma, tau", [(1.0, 1.0, 1.0), (2.0, 0.5, 4.0)])
def test_value_matches_numpy(beta, gamma, tau):
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 16, 10)) * 3
    value = losses.DISTLoss(beta=beta, gamma=gamma, tau=tau)(teacher.astype("float32"), student.astype("float32"))
    np.testing.assert_allclose(float(value), np_dist(teacher, student, beta, gamma, tau), rtol=1e-4)


def test_invariant_to_a_positive_affine_map_of_probabilities_only_through_relations():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, 5)).astype("float32")
    loss = losses.DISTLoss()
    assert float(loss(z, z)) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(z, -z)) > 1.0  # reversed ranking is penalised


def test_registered_checked_and_trains_in_a_distiller():
    assert isinstance(losses.get("dist", tau=2.0), losses.DISTLoss)
    with pytest.raises(ValueError, match="`tau` must be a finite number > 0"):
        losses.DISTLoss(tau=0)
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    with pytest.raises(ValueError, match="DIST needs \\(batch, classes\\) logits"):
        Distiller(teacher=teacher, student=student,
                  distillation_losses=losses.DISTLoss(teacher_layer_name="stage1", student_layer_name="stage1"))
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=losses.DISTLoss(),
                          student_loss_weight=1.0)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype("float32")
    y = np.arange(16) % 10
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    t = distiller.teacher(x, training=False).numpy()
    s = distiller.student(x, training=False).numpy()
    np.testing.assert_allclose(logs["dist_loss"], np_dist(t, s, 1.0, 1.0, 1.0), rtol=1e-4)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(losses.DISTLoss(gamma=3.0)))
    assert clone.gamma == 3.0
