"""VID (Ahn et al., CVPR 2019) against a numpy reference written from the paper."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller, losses

from conftest import tiny_model


def np_softplus(x):
    return np.log1p(np.exp(x))


def np_vid(teacher, student, predictor):
    k1, k2, k3 = (np.asarray(conv.kernel)[0, 0] for conv in predictor.convs)  # 1x1 kernels: (in, out)
    mean = np.maximum(np.maximum(student @ k1, 0) @ k2, 0) @ k3
    variance = np_softplus(np.asarray(predictor.log_scale)) + 1e-5
    return np.mean(0.5 * ((mean - teacher) ** 2 / variance + np.log(variance)))


def test_vid_matches_numpy_and_starts_at_the_initial_variance():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(3, 4, 4, 6)), rng.normal(size=(3, 4, 4, 2))
    loss = losses.VIDLoss(mid_channels=5)
    part = loss.build_parts((None, 4, 4, 6), (None, 4, 4, 2))
    np.testing.assert_allclose(np_softplus(np.asarray(part.log_scale)) + 1e-5, 5.0, rtol=1e-6)
    value = loss(teacher.astype("float32"), student.astype("float32"), parts=part)
    np.testing.assert_allclose(float(value), np_vid(teacher, student, part), rtol=1e-4)
    with pytest.raises(ValueError, match="needs its VIDPredictor"):
        loss(teacher.astype("float32"), student.astype("float32"))


def test_vid_pools_the_larger_map_and_refuses_vectors():
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 8, 8, 2))
    loss = losses.VIDLoss()
    part = loss.build_parts((None, 4, 4, 3), (None, 8, 8, 2))
    pooled = student.reshape(2, 4, 2, 4, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(float(loss(teacher.astype("float32"), student.astype("float32"), parts=part)),
                               np_vid(teacher, pooled, part), rtol=1e-4)
    with pytest.raises(ValueError, match="VID needs \\(batch, H, W, C\\) feature maps"):
        loss.check_shapes((None, 64), (None, 4, 4, 2))


def test_vid_predictor_is_trained_saved_and_never_exported(tmp_path):
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    distiller = Distiller(teacher=teacher, student=student, student_loss_weight=1.0,
                          distillation_losses=losses.get("vid", teacher_layer_name="stage1",
                                                         student_layer_name="stage1"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    part = distiller.loss_parts["vid_loss"]
    before = np.asarray(part.log_scale).copy()
    x = np.random.default_rng(0).normal(size=(16, 28, 28, 1)).astype("float32")
    history = distiller.fit(x, np.arange(16) % 10, batch_size=8, epochs=2, verbose=0)
    assert history.history["vid_loss"][1] < history.history["vid_loss"][0]
    assert not np.allclose(np.asarray(part.log_scale), before)  # the variance is learned
    assert all("log_scale" not in w.path for w in student.weights)
    distiller.save(tmp_path / "vid.keras")
    loaded = keras.models.load_model(tmp_path / "vid.keras")
    np.testing.assert_allclose(np.asarray(loaded.loss_parts["vid_loss"].log_scale), np.asarray(part.log_scale))
