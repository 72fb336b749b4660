"""FT: factor transfer (Kim et al. NeurIPS 2018) with RepDistiller's conventions and two stages by epoch."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from keras import ops

from keras_kd import Distiller, losses, models, registry
from keras_kd.losses.ft import FactorTransferModules, FTLoss, factor_transfer_loss
from keras_kd.methods.kd import build_losses

n = ops.convert_to_numpy


def np_conv_same(x, kernel, bias):
    """3x3 'same' convolution, stride 1: out[b,h,w,o] = sum_{i,j,c} pad(x)[b,h+i,w+j,c] K[i,j,c,o] + bias."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = x.shape[1:3]
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += np.einsum("bhwc,co->bhwo", padded[:, i:i + height, j:j + width], kernel[i, j])
    return out + bias


def np_conv_transpose_same(x, kernel, bias):
    """Stride-1 'same' transposed convolution = convolution with the flipped kernel (Keras kernel (kh, kw, out, in))."""
    return np_conv_same(x, kernel[::-1, ::-1].transpose(0, 1, 3, 2), bias)


def leaky(x):
    return np.where(x > 0, x, 0.1 * x)


def np_factor(f):
    v = (f ** 2).mean(-1).reshape(f.shape[0], -1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_factor_transfer_matches_numpy_and_pools_the_larger_map():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(3, 8, 8, 5)), rng.normal(size=(3, 4, 4, 6))
    pooled = fs.reshape(3, 4, 2, 4, 2, 5).mean(axis=(2, 4))
    expected = np.abs(np_factor(pooled) - np_factor(ft)).mean()
    assert float(factor_transfer_loss(fs.astype("float32"), ft.astype("float32"))) == pytest.approx(expected, rel=1e-5)


def _setup(seed=0):
    rng = np.random.default_rng(seed)
    t = rng.random((2, 4, 4, 8)).astype("float32")
    s = rng.random((2, 4, 4, 4)).astype("float32")
    loss = FTLoss(teacher_layer_name="stage3", student_layer_name="stage3", paraphraser_epochs=2,
                  reconstruction_weight=0.5)
    return t, s, loss, loss.build_parts(t.shape, s.shape)


def test_stage_values_match_numpy_references():
    t, s, loss, modules = _setup()
    # Stage 1: the paraphraser's reconstruction.
    x = t
    for layer in modules.encoder:
        x = leaky(np_conv_same(x, n(layer.kernel), n(layer.bias)))
    factor_t = x
    for layer in modules.decoder:
        x = leaky(np_conv_transpose_same(x, n(layer.kernel), n(layer.bias)))
    expected = 0.5 * np.mean((x - t) ** 2)
    np.testing.assert_allclose(float(loss(t, s, parts=modules, epoch=1, training=True)), expected, rtol=1e-4)
    # Stage 2: normalised L1 between the teacher's factor (the encoder as at the end of stage 1) and the translator's.
    y = s
    for conv, norm in zip(modules.translator, modules.translator_norms, strict=True):
        gamma, beta, mean, var = (n(w) for w in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance))
        y = leaky((np_conv_same(y, n(conv.kernel), 0.0) - mean) / np.sqrt(var + norm.epsilon) * gamma + beta)
    expected = np.abs(np_factor(y) - np_factor(factor_t)).mean()
    np.testing.assert_allclose(float(loss(t, s, parts=modules, epoch=2, training=False)), expected, rtol=1e-4)


def test_gradients_follow_the_stages_and_never_reach_the_teacher():
    t, s, loss, modules = _setup()
    teacher, student = tf.Variable(t), tf.Variable(s)
    paraphraser = [w for layer in (*modules.encoder, *modules.decoder) for w in layer.trainable_weights]
    translator = [w for layer in (*modules.translator, *modules.translator_norms) for w in layer.trainable_weights]
    assert len(modules.trainable_weights) == len(paraphraser) + len(translator)

    def grads(epoch):
        with tf.GradientTape(persistent=True) as tape:
            value = loss(teacher, student, parts=modules, epoch=epoch, training=True)
        return [tape.gradient(value, group) for group in (paraphraser, translator, [student], [teacher])]

    def moved(gs):
        return [g is not None and bool(np.any(n(g))) for g in gs]

    par, tra, stu, tea = grads(0)
    assert all(moved(par)) and not any(moved(tra)) and not any(moved(stu))
    assert moved(tea) == [True]  # stage 1 reconstructs the teacher's map; distillers pass it without gradient
    par, tra, stu, tea = grads(2)
    assert not any(moved(par)) and all(moved(tra)) and all(moved(stu)) and not any(moved(tea))


def test_teacher_factor_is_frozen_after_the_paraphraser_stage():
    t, s, loss, modules = _setup()
    loss(t, s, parts=modules, epoch=1)  # stage 1: the frozen copy follows the live encoder
    first = float(loss(t, s, parts=modules, epoch=2))
    for layer in modules.encoder:  # what momentum / weight decay would do to the live weights after stage 1
        layer.kernel.assign(layer.kernel * 0.5)
    assert float(loss(t, s, parts=modules, epoch=3)) == pytest.approx(first, rel=1e-6)
    np.testing.assert_array_equal(n(modules.frozen_encoder[0][0]), 2 * n(modules.encoder[0].kernel))


def test_bad_arguments_and_config_round_trip():
    with pytest.raises(ValueError, match="paraphraser_epochs"):
        FTLoss(paraphraser_epochs=0)
    with pytest.raises(ValueError, match="reconstruction_weight"):
        FTLoss(reconstruction_weight=0.0)
    with pytest.raises(ValueError, match="feature maps"):
        FTLoss().check_shapes((None, 10), (None, 10))
    loss = FTLoss(teacher_layer_name="stage3", student_layer_name="stage3", factor_rate=0.25, paraphraser_epochs=3,
                  reconstruction_weight=0.01, active_epochs=(0, 50))
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(rebuilt, FTLoss) and rebuilt.get_config() == loss.get_config()
    modules = FactorTransferModules((4, 4, 8), (4, 4, 4), 0.5)
    assert FactorTransferModules.from_config(modules.get_config()).factor_channels == 4


@pytest.mark.parametrize("jit_compile", [False, True], ids=["no_xla", "xla"])
def test_distiller_fit_trains_the_parts_by_stage_saves_and_exports_a_clean_student(tmp_path, jit_compile):
    teacher = models.get("resnet8", (28, 28, 1), 10)
    student = models.get("resnet8", (28, 28, 1), 10, width_ratio=0.5)
    ft = losses.get("ft", teacher_layer_name="stage3", student_layer_name="stage3", paraphraser_epochs=1,
                    reconstruction_weight=0.005)
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=[ft],
                          distillation_loss_weights=[200.0], student_loss_weight=1.0, student_loss_start_epoch=1)
    modules = distiller.loss_parts["ft_loss"]
    distiller.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 28, 28, 1)).astype("float32"), np.arange(16) % 10
    snapshot = lambda layers: [n(w) for layer in layers for w in layer.trainable_weights]  # noqa: E731
    encoder0, translator0 = snapshot(modules.encoder), snapshot(modules.translator)
    teacher0 = [n(w) for w in teacher.weights]
    first = distiller.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    encoder1, translator1 = snapshot(modules.encoder), snapshot(modules.translator)
    assert all(np.any(a != b) for a, b in zip(encoder0, encoder1, strict=True))  # stage 1 trains the paraphraser only
    assert all(np.array_equal(a, b) for a, b in zip(translator0, translator1, strict=True))
    second = distiller.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, verbose=0).history
    assert first["student_loss"] == [0.0] and second["student_loss"][0] > 0 and second["ft_loss"][0] > 0
    assert all(np.array_equal(a, b) for a, b in zip(encoder1, snapshot(modules.encoder), strict=True))  # plain SGD: no drift
    assert all(np.any(a != b) for a, b in zip(translator1, snapshot(modules.translator), strict=True))
    assert all(np.array_equal(a, n(w)) for a, w in zip(teacher0, teacher.weights, strict=True))
    path = tmp_path / "ft.keras"
    distiller.save(path)
    reloaded = keras.models.load_model(path)
    for a, b in zip(reloaded.loss_parts["ft_loss"].weights, modules.weights, strict=True):
        np.testing.assert_array_equal(n(a), n(b))
    fresh = models.get("resnet8", (28, 28, 1), 10, width_ratio=0.5)
    assert len(distiller.student.weights) == len(fresh.weights)
    assert not any("paraphraser" in w.path or "translator" in w.path for w in distiller.student.weights)


def test_suite_row_and_config():
    (entry,) = dict(registry.suite_rows())["ft"].losses
    assert entry["weight"] == 200.0 and entry["paraphraser_epochs"] == registry.PRETRAIN_EPOCHS
    assert dict(registry.suite_rows())["ft"].pretrain_fraction == 0.25
    with open("trainers/configs/ft_fmnist.yaml") as handle:
        method = yaml.safe_load(handle)["method"]
    (loss,), weights = build_losses(method["losses"])
    assert weights == [200.0] and loss.factor_rate == 0.5 and loss.paraphraser_epochs == 30
    assert method["student_loss_start_epoch"] == 30
