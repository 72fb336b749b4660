import numpy as np
import pytest
import tensorflow as tf

from keras_kd import losses
from keras_kd.losses import AttentionTransferLoss, FeatureLoss, HintLoss, LocalityPreservingLoss


def np_attention(a, p):
    q = np.mean(np.abs(a.astype(np.float64)) ** p, axis=-1).reshape(len(a), -1)
    return q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)


def np_avg_pool(a, size):
    n, h, w, c = a.shape
    f = h // size
    return a.reshape(n, size, f, size, f, c).mean(axis=(2, 4))


def np_at(t, s, p=2.0):
    size = min(t.shape[1], s.shape[1])
    t = np_avg_pool(t, size) if t.shape[1] != size else t
    s = np_avg_pool(s, size) if s.shape[1] != size else s
    return np.mean((np_attention(s, p) - np_attention(t, p)) ** 2)


def np_lp(t, s, k, sigma2=None, normalize=False):
    t = t.reshape(len(t), -1).astype(np.float64)
    s = s.reshape(len(s), -1).astype(np.float64)
    if normalize:
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        s = s / np.linalg.norm(s, axis=1, keepdims=True)
    m = len(t)
    k = min(k, m - 1)
    if k < 1:
        return 0.0
    dist = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nn = np.argsort(dist, axis=1)[:, :k]
    knn = np.take_along_axis(dist, nn, axis=1)
    sigma2 = knn.mean() if sigma2 is None else sigma2
    total = 0.0
    for i in range(m):
        for col, j in enumerate(nn[i]):
            total += np.exp(-knn[i, col] / sigma2) * ((s[i] - s[j]) ** 2).sum()
    return total / (m * k)


def np_mse(t, s):
    return np.mean((t.astype(np.float64) - s.astype(np.float64)) ** 2)


def np_cosine_similarity(t, s):
    """Keras' cosine_similarity loss: -cos along the last axis, averaged."""
    t, s = t.astype(np.float64), s.astype(np.float64)
    t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-7)
    s = s / np.maximum(np.linalg.norm(s, axis=-1, keepdims=True), 1e-7)
    return np.mean(-np.sum(t * s, axis=-1))


def np_kl_divergence(t, s):
    """Keras' kl_divergence loss: both sides clipped to [1e-7, 1], summed over the last axis."""
    t = np.clip(t.astype(np.float64), 1e-7, 1)
    s = np.clip(s.astype(np.float64), 1e-7, 1)
    return np.mean(np.sum(t * np.log(t / s), axis=-1))


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(4, 8, 8, 16), (3, 7, 7, 5), (2, 16)])
def test_hint_is_mse(shape):
    u = RNG.normal(size=shape).astype("float32")
    v = RNG.normal(size=shape).astype("float32")
    np.testing.assert_allclose(float(HintLoss()(u, v)), np.mean((u - v) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="to match the teacher features"):
        HintLoss()(u, v[..., :1])


@pytest.mark.parametrize(
    "t_shape,s_shape,p",
    [((4, 8, 8, 16), (4, 8, 8, 4), 2.0), ((3, 8, 8, 6), (3, 4, 4, 6), 2.0),
     ((3, 4, 4, 6), (3, 16, 16, 2), 2.0), ((2, 6, 6, 3), (2, 6, 6, 9), 1.0)],
)
def test_attention_transfer_matches_numpy(t_shape, s_shape, p):
    t = RNG.normal(size=t_shape).astype("float32")
    s = RNG.normal(size=s_shape).astype("float32")
    np.testing.assert_allclose(float(AttentionTransferLoss(p)(t, s)), np_at(t, s, p), rtol=1e-5, atol=1e-9)


def test_attention_transfer_errors():
    with pytest.raises(ValueError, match="needs \\(batch, H, W, C\\) feature maps; the teacher"):
        AttentionTransferLoss()(np.zeros((2, 8), "float32"), np.zeros((2, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="Cannot average-pool a 6x6 map to 4x4"):
        AttentionTransferLoss()(np.ones((2, 6, 6, 1), "float32"), np.ones((2, 4, 4, 1), "float32"))
    with pytest.raises(ValueError, match="`p` must be a finite number > 0"):
        AttentionTransferLoss(0)
    with pytest.raises(ValueError, match="cannot pool teacher \\(6, 6, 1\\) and student \\(4, 4, 1\\)"):
        AttentionTransferLoss().check_shapes((None, 6, 6, 1), (None, 4, 4, 1))
    with pytest.raises(ValueError, match="compares 1x1 maps"):
        AttentionTransferLoss().check_shapes((None, 8, 8, 4), (None, 1, 1, 4))
    AttentionTransferLoss().check_shapes((None, 8, 8, 4), (None, 2, 2, 16))  # 8x8 pools to 2x2: fine


@pytest.mark.parametrize("m,dt,ds,k", [(16, 32, 8, 5), (9, 12, 12, 3), (6, 20, 4, 1), (4, 8, 8, 10)])
@pytest.mark.parametrize("sigma2", [None, 2.5])
@pytest.mark.parametrize("normalize", [False, True])
def test_locality_preserving_matches_numpy(m, dt, ds, k, sigma2, normalize):
    t = RNG.normal(size=(m, dt)).astype("float32")
    s = RNG.normal(size=(m, ds)).astype("float32")
    value = float(LocalityPreservingLoss(k, sigma2, normalize)(t, s))
    np.testing.assert_allclose(value, np_lp(t, s, k, sigma2, normalize), rtol=2e-4, atol=1e-6)


def test_locality_preserving_on_feature_maps_and_tiny_batches():
    t = RNG.normal(size=(5, 4, 4, 3)).astype("float32")
    s = RNG.normal(size=(5, 2, 2, 7)).astype("float32")
    np.testing.assert_allclose(float(LocalityPreservingLoss(2, normalize=False)(t, s)), np_lp(t, s, 2), rtol=2e-4)
    # The default (chosen on the standard protocol's validation split) L2-normalizes both feature sets.
    np.testing.assert_allclose(float(LocalityPreservingLoss(2)(t, s)), np_lp(t, s, 2, normalize=True), rtol=2e-4)
    one = RNG.normal(size=(1, 8)).astype("float32")
    assert float(LocalityPreservingLoss(5)(one, one)) == 0.0  # no neighbours, no NaN
    with pytest.raises(ValueError, match="`k` must be a positive integer"):
        LocalityPreservingLoss(0)
    with pytest.raises(ValueError, match="sigma2"):
        LocalityPreservingLoss(3, sigma2=-1.0)


def test_locality_preserving_is_invariant_to_batch_order():
    t = RNG.normal(size=(12, 10)).astype("float32")
    s = RNG.normal(size=(12, 6)).astype("float32")
    perm = RNG.permutation(12)
    loss = LocalityPreservingLoss(4)
    np.testing.assert_allclose(float(loss(t[perm], s[perm])), float(loss(t, s)), rtol=1e-5)


def test_locality_preserving_independent_of_batch_size_for_repeated_batch():
    # A second copy of the batch, shifted far away in both feature spaces,
    # has the same neighbourhoods and distances: with the 1/(m*k)
    # normalization the loss of the doubled batch equals the original.
    t = RNG.normal(size=(10, 8)).astype("float32")
    s = RNG.normal(size=(10, 5)).astype("float32")
    t2 = np.concatenate([t, t + 50.0]).astype("float32")
    s2 = np.concatenate([s, s + 50.0]).astype("float32")
    loss = LocalityPreservingLoss(3, sigma2=4.0, normalize=False)
    np.testing.assert_allclose(float(loss(t2, s2)), float(loss(t, s)), rtol=1e-3)
    adaptive = LocalityPreservingLoss(3, normalize=False)
    np.testing.assert_allclose(float(adaptive(t2, s2)), float(adaptive(t, s)), rtol=1e-3)


@pytest.mark.parametrize(
    "loss,t_shape,s_shape,teacher_gradient",
    [(HintLoss(), (4, 6, 6, 3), (4, 6, 6, 3), True),
     (AttentionTransferLoss(), (4, 8, 8, 3), (4, 4, 4, 5), True),
     (FeatureLoss("cosine_similarity"), (4, 6), (4, 6), True),
     (LocalityPreservingLoss(3), (8, 10), (8, 4), False)],
)
def test_gradients_reach_the_student_and_are_not_stopped_by_the_loss(loss, t_shape, s_shape, teacher_gradient):
    # Losses never stop gradients themselves (SFTN trains its teacher through
    # them); distillers pass stop_gradient teacher outputs (test_contract.py).
    teacher = tf.Variable(RNG.normal(size=t_shape).astype("float32"))
    student = tf.Variable(RNG.normal(size=s_shape).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        value = loss(teacher, student)
        stopped = loss(tf.stop_gradient(teacher), student)
    grad = tape.gradient(value, student)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0
    assert tape.gradient(stopped, teacher) is None
    teacher_grad = tape.gradient(value, teacher)
    if teacher_gradient:
        assert teacher_grad is not None and float(tf.reduce_sum(tf.abs(teacher_grad))) > 0
    else:  # LP: neighbourhoods and affinities of the teacher are constants by definition
        assert teacher_grad is None or float(tf.reduce_sum(tf.abs(teacher_grad))) == 0


def test_locality_gradient_matches_finite_differences():
    t = RNG.normal(size=(6, 5)).astype(np.float64)
    s = RNG.normal(size=(6, 3)).astype(np.float64)
    loss = LocalityPreservingLoss(2, sigma2=3.0, normalize=False)
    variable = tf.Variable(s.astype("float32"))
    with tf.GradientTape() as tape:
        value = loss(t.astype("float32"), variable)
    grad = tape.gradient(value, variable).numpy()
    eps = 1e-4
    for i, j in [(0, 0), (3, 2), (5, 1)]:
        plus, minus = s.copy(), s.copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = (np_lp(t, plus, 2, 3.0) - np_lp(t, minus, 2, 3.0)) / (2 * eps)
        np.testing.assert_allclose(grad[i, j], numeric, rtol=1e-3, atol=1e-5)


def test_feature_loss_wraps_plain_keras_losses_by_name():
    t = RNG.normal(size=(4, 3, 3, 6)).astype("float32")
    s = RNG.normal(size=(4, 3, 3, 6)).astype("float32")
    np.testing.assert_allclose(float(FeatureLoss("mse")(t, s)), np_mse(t, s), rtol=1e-5)
    np.testing.assert_allclose(float(FeatureLoss("cosine_similarity")(t, s)), np_cosine_similarity(t, s), rtol=1e-5)
    p = np.exp(RNG.normal(size=(5, 7))).astype("float32")
    q = np.exp(RNG.normal(size=(5, 7))).astype("float32")
    p, q = p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)
    np.testing.assert_allclose(float(FeatureLoss("kl_divergence")(p, q)), np_kl_divergence(p, q), rtol=1e-5)
    # Hand-computed cases.
    assert float(FeatureLoss("mse")(np.ones((2, 4), "float32"), np.zeros((2, 4), "float32"))) == 1.0
    e = np.eye(3, dtype="float32")
    np.testing.assert_allclose(float(FeatureLoss("cosine_similarity")(e, 5 * e)), -1.0, rtol=1e-6)
    np.testing.assert_allclose(float(FeatureLoss("cosine_similarity")(e, np.roll(e, 1, axis=0))), 0.0, atol=1e-7)
    half = np.array([[0.5, 0.5]], "float32")
    skew = np.array([[0.25, 0.75]], "float32")
    np.testing.assert_allclose(
        float(FeatureLoss("kl_divergence")(half, skew)), 0.5 * np.log(2.0) + 0.5 * np.log(2.0 / 3.0), rtol=1e-6
    )
    assert float(FeatureLoss("kl_divergence")(p, p)) == pytest.approx(0.0, abs=1e-6)


def test_feature_loss_config_registry_and_shape_check():
    import keras

    loss = losses.get("feature", loss="cosine_similarity", teacher_layer_name="embedding",
                      student_layer_name="embedding", name="cos")
    assert isinstance(loss, FeatureLoss)
    again = FeatureLoss.from_config(loss.get_config())
    assert (again.loss, again.teacher_layer_name, again.student_layer_name, again.name) == (
        "cosine_similarity", "embedding", "embedding", "cos")
    huber = FeatureLoss(keras.losses.Huber(delta=0.5))
    t, s = np.zeros((3, 4), "float32"), np.full((3, 4), 2.0, "float32")
    np.testing.assert_allclose(float(huber(t, s)), 0.5 * (2.0 - 0.5 * 0.5), rtol=1e-6)  # |x| > delta
    mae = FeatureLoss(keras.losses.MeanAbsoluteError())  # (Keras' Huber config drops `delta`)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(mae))
    assert isinstance(restored, FeatureLoss)
    np.testing.assert_allclose(float(restored(t, s)), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        FeatureLoss("mse").check_shapes((None, 4, 4, 8), (None, 4, 4, 16))
    with pytest.raises(ValueError):
        FeatureLoss("no_such_loss")
