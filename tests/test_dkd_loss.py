"""DKD (Zhao et al., CVPR 2022) and logit standardization (Sun et al., CVPR 2024)
against numpy references written from the papers."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller, losses

from conftest import np_standardize, tiny_model


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    return float(np.sum(p * (np.log(p) - np.log(q))))


def np_dkd(teacher, student, labels, alpha, beta, t):
    """Per sample: TCKD on the binary (target, rest) split, NCKD on the softmax
    over the non-target classes only (the target column removed)."""
    tckd, nckd = [], []
    for z_t, z_s, y in zip(teacher, student, labels, strict=True):
        p_t, p_s = np_softmax(z_t / t), np_softmax(z_s / t)
        tckd.append(np_kl(np.array([p_t[y], 1 - p_t[y]]), np.array([p_s[y], 1 - p_s[y]])))
        rest = np.arange(len(z_t)) != y
        nckd.append(np_kl(np_softmax(z_t[rest] / t), np_softmax(z_s[rest] / t)))
    return t * t * (alpha * np.mean(tckd) + beta * np.mean(nckd)), np.array(tckd), np.array(nckd)


@pytest.mark.parametrize("alpha, beta, t", [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0)])
def test_dkd_matches_numpy(alpha, beta, t):
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 12, 10)) * 3
    labels = rng.integers(0, 10, size=12)
    loss = losses.DecoupledKDLoss(alpha=alpha, beta=beta, temperature=t, warmup_epochs=0)
    value = loss(teacher.astype("float32"), student.astype("float32"), labels=labels)
    np.testing.assert_allclose(float(value), np_dkd(teacher, student, labels, alpha, beta, t)[0], rtol=1e-4)


def test_classic_kd_is_tckd_plus_confidence_weighted_nckd():
    # The paper's Eq. 7: KD = TCKD + (1 - p_t^teacher) NCKD, per sample.
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(2, 6, 5)) * 2
    labels = rng.integers(0, 5, size=6)
    _, tckd, nckd = np_dkd(teacher, student, labels, 1.0, 1.0, 1.0)
    p_target = np_softmax(teacher)[np.arange(6), labels]
    kd = np.mean([np_kl(np_softmax(a), np_softmax(b)) for a, b in zip(teacher, student, strict=True)])
    np.testing.assert_allclose(kd, np.mean(tckd + (1 - p_target) * nckd), rtol=1e-10)
    value = losses.SoftTargetLoss(temperature=1.0)(teacher.astype("float32"), student.astype("float32"))
    np.testing.assert_allclose(float(value), kd, rtol=1e-4)


def test_dkd_warmup_ramp_and_checks():
    rng = np.random.default_rng(2)
    teacher, student = rng.normal(size=(2, 4, 10)).astype("float32")
    labels = np.array([0, 3, 9, 1])
    full = float(losses.DecoupledKDLoss(warmup_epochs=0)(teacher, student, labels=labels))
    ramped = losses.DecoupledKDLoss(warmup_epochs=20)
    assert float(ramped(teacher, student, labels=labels, epoch=0)) == pytest.approx(full / 20, rel=1e-5)
    assert float(ramped(teacher, student, labels=labels, epoch=9)) == pytest.approx(full / 2, rel=1e-5)
    assert float(ramped(teacher, student, labels=labels, epoch=40)) == pytest.approx(full, rel=1e-5)
    with pytest.raises(ValueError, match="needs the labels"):
        ramped(teacher, student)
    with pytest.raises(ValueError, match="`warmup_epochs` must be an integer >= 0"):
        losses.DecoupledKDLoss(warmup_epochs=-1)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(
        losses.DecoupledKDLoss(beta=2.0, logit_standardization=True)))
    assert clone.beta == 2.0 and clone.logit_standardization


def test_dkd_in_a_distiller_sees_labels_and_epoch():
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    distiller = Distiller(teacher=teacher, student=student,
                          distillation_losses=losses.get("dkd", warmup_epochs=0), student_loss_weight=1.0)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype("float32")
    y = np.arange(16) % 10
    logs = distiller.evaluate(x, y, batch_size=16, return_dict=True, verbose=0)
    t, s = distiller.teacher(x).numpy(), distiller.student(x).numpy()
    np.testing.assert_allclose(logs["dkd_loss"], np_dkd(t, s, y, 1.0, 8.0, 4.0)[0], rtol=1e-4)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["dkd_loss"][0])


@pytest.mark.parametrize("name, options", [("kd", {"temperature": 2.0}), ("dist", {"tau": 2.0}),
                                           ("dkd", {"temperature": 2.0, "warmup_epochs": 0})])
def test_logit_standardization_is_the_loss_of_z_scored_logits(name, options):
    rng = np.random.default_rng(3)
    teacher, student = (rng.normal(size=(2, 8, 10)) * [[3.0], [0.5]][0]).astype("float32")
    labels = np.arange(8) % 10
    standardized = losses.get(name, logit_standardization=True, **options)
    plain = losses.get(name, **options)
    expected = plain(np_standardize(teacher).astype("float32"), np_standardize(student).astype("float32"),
                     labels=labels)
    assert float(standardized(teacher, student, labels=labels)) == pytest.approx(float(expected), rel=1e-4)
    # Only the relations of the logits count: a positive affine map of the student's changes nothing.
    assert float(standardized(teacher, 5.0 * teacher + 2.0, labels=labels)) == pytest.approx(0.0, abs=1e-5)
