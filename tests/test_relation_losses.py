"""SP, PKT, RKD and NST against numpy references written from the papers
(with the CRD benchmark's normalisations), plus their use in a distiller."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, losses

from conftest import tiny_model

RNG = np.random.default_rng(0)


def np_sp(t, s):
    b = len(t)

    def gram(f):
        f = f.reshape(b, -1)
        g = f @ f.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return np.sum((gram(t) - gram(s)) ** 2) / b**2


def np_pkt(t, s, eps=1e-7):
    def conditional(f):
        f = f.reshape(len(f), -1)
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = (f @ f.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    p_t, p_s = conditional(t), conditional(s)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


def huber(a, b):
    d = np.abs(a - b)
    return np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5))


def np_rkd(t, s, wd=25.0, wa=50.0):
    def distances(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[~np.eye(n, dtype=bool)].mean()

    def angles(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[j, i, k] = 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
        return out

    t, s = t.reshape(len(t), -1), s.reshape(len(s), -1)
    return wd * huber(distances(s), distances(t)) + wa * huber(angles(s), angles(t))


def np_nst(t, s):
    def maps(f):  # (b, C, HW), each channel map unit-norm
        b, h, w, c = f.shape
        m = f.reshape(b, h * w, c).transpose(0, 2, 1)
        return m / np.linalg.norm(m, axis=2, keepdims=True)

    def k(a, b):
        return np.mean(np.einsum("bih,bjh->bij", a, b) ** 2)

    t, s = maps(t), maps(s)
    return k(t, t) + k(s, s) - 2 * k(s, t)


def test_sp_matches_numpy_for_different_shapes():
    t, s = RNG.normal(size=(6, 4, 4, 8)), RNG.normal(size=(6, 2, 2, 3))
    value = losses.SimilarityPreservingLoss()(t.astype("float32"), s.astype("float32"))
    np.testing.assert_allclose(float(value), np_sp(t, s), rtol=1e-4)


def test_pkt_matches_numpy_and_is_scale_free():
    t, s = RNG.normal(size=(7, 12)), RNG.normal(size=(7, 5))
    np.testing.assert_allclose(float(losses.PKTLoss()(t.astype("float32"), s.astype("float32"))), np_pkt(t, s),
                               rtol=1e-4)
    assert float(losses.PKTLoss()(t.astype("float32"), (4 * t).astype("float32"))) == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("wd, wa", [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)])
def test_rkd_matches_numpy(wd, wa):
    t, s = RNG.normal(size=(6, 10)) * 2, RNG.normal(size=(6, 4))
    value = losses.RKDLoss(distance_weight=wd, angle_weight=wa)(t.astype("float32"), s.astype("float32"))
    np.testing.assert_allclose(float(value), np_rkd(t, s, wd, wa), rtol=1e-4, atol=1e-6)


def test_rkd_angles_of_offset_features_and_duplicates_match_numpy():
    # Post-ReLU embeddings sit far from the origin (where differences of Gram entries would lose precision).
    t = 10 + RNG.normal(size=(8, 16))
    s = 5 + RNG.normal(size=(8, 6))
    t[3], s[5] = t[1], s[2]  # duplicate rows: no angle at them
    value = losses.RKDLoss(distance_weight=0.0, angle_weight=1.0)(t.astype("float32"), s.astype("float32"))
    np.testing.assert_allclose(float(value), np_rkd(t, s, 0.0, 1.0), rtol=1e-4)
    s_var = keras.Variable(s.astype("float32"))
    with tf.GradientTape() as tape:
        loss = losses.RKDLoss()(t.astype("float32"), s_var)
    assert np.isfinite(tape.gradient(loss, s_var).numpy()).all()


def test_nst_matches_numpy_and_pools_the_larger_map():
    t, s = RNG.random(size=(3, 4, 4, 6)), RNG.random(size=(3, 4, 4, 5))
    np.testing.assert_allclose(float(losses.NSTLoss()(t.astype("float32"), s.astype("float32"))), np_nst(t, s),
                               rtol=1e-4)
    big = RNG.random(size=(3, 8, 8, 6))
    pooled = big.reshape(3, 4, 2, 4, 2, 6).mean(axis=(2, 4))
    np.testing.assert_allclose(float(losses.NSTLoss()(big.astype("float32"), s.astype("float32"))),
                               np_nst(pooled, s), rtol=1e-4)
    # A 2x2 map with more channels than positions takes the (P, P) Gram form.
    t, s = RNG.random(size=(3, 2, 2, 9)), RNG.random(size=(3, 2, 2, 7))
    np.testing.assert_allclose(float(losses.NSTLoss()(t.astype("float32"), s.astype("float32"))), np_nst(t, s),
                               rtol=1e-4)
    with pytest.raises(ValueError, match="NST needs \\(batch, H, W, C\\) feature maps"):
        losses.NSTLoss().check_shapes((None, 10), (None, 4, 4, 3))


@pytest.mark.parametrize("name, teacher_layer, student_layer, metric", [
    ("sp", "stage1", "stage1", "sp_loss"), ("pkt", "embedding", "embedding", "pkt_loss"),
    ("rkd", "embedding", "embedding", "rkd_loss"), ("nst", "stage1", "stage1", "nst_loss"),
])
def test_relation_losses_train_in_a_distiller_and_serialize(name, teacher_layer, student_layer, metric):
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    loss = losses.get(name, teacher_layer_name=teacher_layer, student_layer_name=student_layer)
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=loss, student_loss_weight=1.0)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(8, 28, 28, 1)).astype("float32")
    history = distiller.fit(x, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history[metric][0]) and history.history[metric][0] > 0
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss) and clone.get_config() == loss.get_config()
