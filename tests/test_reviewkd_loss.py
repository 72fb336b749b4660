"""ReviewKD (Chen et al., CVPR 2021) against numpy references written from the
formula with the benchmark code's conventions (mdistiller): the hierarchical
context loss, the attention-based fusion, the warm-up, and the ABFs as a
distiller-owned part in a fit step of two zoo ResNets."""

import math
import re
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, losses, models, registry
from keras_kd.losses.reviewkd import (
    RESNET20_TEACHER_LAYERS,
    ZOO_STUDENT_LAYERS,
    ReviewKDFusion,
    ReviewKDLoss,
    adaptive_average_pool,
    adaptive_pool_matrix,
    hcl_loss,
    nearest_indices,
    resize_nearest,
)
from keras_kd.methods.kd import build_losses

RNG = np.random.default_rng(0)
EPS = 1e-5


# -- numpy references ------------------------------------------------------------


def np_adaptive_pool(f, size):
    """PyTorch's adaptive average pooling: bin i spans floor(i*H/l) .. ceil((i+1)*H/l)."""
    b, h, w, c = f.shape
    out = np.zeros((b, size, size, c))
    for i in range(size):
        h0, h1 = math.floor(i * h / size), math.ceil((i + 1) * h / size)
        for j in range(size):
            w0, w1 = math.floor(j * w / size), math.ceil((j + 1) * w / size)
            out[:, i, j] = f[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def np_hcl(student_maps, teacher_maps):
    """sum over levels of (MSE + sum_l w_l MSE(pool_l)) / (1 + sum_l w_l), w halving from 1/2, l in 4, 2, 1 < H."""
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        fs, ft = (np.asarray(a, np.float64) for a in (fs, ft))
        fs, ft = (a[:, None, None, :] if a.ndim == 2 else a for a in (fs, ft))  # pooled (batch, C): a 1x1 map
        loss, weight, norm = np.mean((fs - ft) ** 2), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= fs.shape[1]:
                continue
            weight /= 2.0
            loss += weight * np.mean((np_adaptive_pool(fs, size) - np_adaptive_pool(ft, size)) ** 2)
            norm += weight
        total += loss / norm
    return total


def np_bn(x, bn):
    gamma, beta, mean, var = (np.asarray(v, np.float64) for v in (bn.gamma, bn.beta, bn.moving_mean,
                                                                  bn.moving_variance))
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def np_conv3x3(x, kernel):
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx]
    return out


def np_nearest(x, size):
    """Integer-factor nearest resize: repeat rows/columns up, keep the first of each block down."""
    h = x.shape[1]
    if size >= h:
        return np.repeat(np.repeat(x, size // h, axis=1), size // h, axis=2)
    return x[:, :: h // size, :: h // size]


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_fusion(students, fusion):
    """The ABFs recomputed from the layer's own weights (inference-mode BatchNorm)."""
    outputs, residual = [None] * len(students), None
    for i in reversed(range(len(students))):
        abf, s = fusion.abfs[i], np.asarray(students[i], np.float64)
        if s.ndim == 2:
            s = s[:, None, None, :]
        x = np_bn(s @ np.asarray(abf.conv1.kernel, np.float64)[0, 0], abf.bn1)
        if residual is not None:
            y = np_nearest(residual, x.shape[1])
            z = np.concatenate([x, y], axis=-1) @ np.asarray(abf.att_conv.kernel, np.float64)[0, 0]
            a = np_sigmoid(z + np.asarray(abf.att_conv.bias, np.float64))
            x = x * a[..., 0:1] + y * a[..., 1:2]
        x = np_nearest(x, abf.out_size[0])
        outputs[i] = np_bn(np_conv3x3(x, np.asarray(abf.conv2.kernel, np.float64)), abf.bn2)
        residual = x
    return outputs


def randomize_batchnorms(fusion):
    for abf in fusion.abfs:
        for bn in (abf.bn1, abf.bn2):
            n = bn.gamma.shape[0]
            bn.gamma.assign(RNG.uniform(0.5, 1.5, n))
            bn.beta.assign(RNG.normal(size=n))
            bn.moving_mean.assign(RNG.normal(size=n))
            bn.moving_variance.assign(RNG.uniform(0.5, 2.0, n))


def f32(a):
    return np.asarray(a, "float32")


# A tiny three-level case: the shallow teacher map is twice the student's (the fused map is up-sampled).
T_SHAPES = {"t1": (2, 8, 8, 5), "t2": (2, 2, 2, 4), "t3": (2, 7)}
S_SHAPES = {"s1": (2, 4, 4, 3), "s2": (2, 2, 2, 6), "s3": (2, 6)}
NAMES = dict(teacher_layer_names=list(T_SHAPES), student_layer_names=list(S_SHAPES))


def tiny_case(seed=0):
    rng = np.random.default_rng(seed)
    teacher = {k: f32(rng.normal(size=s)) for k, s in T_SHAPES.items()}
    student = {k: f32(rng.normal(size=s)) for k, s in S_SHAPES.items()}
    return teacher, student


def call(loss, teacher, student, fusion, **kwargs):
    first_t, first_s = loss.teacher_layer_names[0], loss.student_layer_names[0]
    return loss(teacher[first_t], student[first_s], teacher_outputs=teacher, student_outputs=student,
                parts=fusion, **kwargs)


# -- tests -------------------------------------------------------------------------


def test_hcl_matches_numpy_with_pooling_weights_and_normalisation():
    # PyTorch's adaptive bins on sizes that do not divide (14 -> 4 overlaps: rows 0-3, 3-6, 7-10, 10-13).
    rows = adaptive_pool_matrix(14, 4)
    assert [tuple(np.flatnonzero(r)[[0, -1]]) for r in rows] == [(0, 3), (3, 6), (7, 10), (10, 13)]
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=1e-6)
    # One 8x8 level by hand: every pooled difference is 1 -> (1 + .5 + .25 + .125) / 1.875 = 1.
    assert float(hcl_loss([np.ones((2, 8, 8, 3), "float32")], [np.zeros((2, 8, 8, 3), "float32")])) == pytest.approx(1.0)
    # A constant map: pooling keeps the value, a 2x2 level has the full map + 1x1 pool, at weights 1 and 1/2.
    value = hcl_loss([np.full((1, 2, 2, 1), 3.0, "float32")], [np.zeros((1, 2, 2, 1), "float32")])
    assert float(value) == pytest.approx((9.0 + 0.5 * 9.0) / 1.5)
    shapes = [(3, 28, 28, 2), (3, 14, 14, 3), (3, 7, 7, 4), (3, 3, 3, 2), (3, 1, 1, 5), (3, 6)]
    student = [RNG.normal(size=s) for s in shapes]
    teacher = [RNG.normal(size=s) for s in shapes]
    value = hcl_loss([f32(a) for a in student], [f32(a) for a in teacher])
    np.testing.assert_allclose(float(value), np_hcl(student, teacher), rtol=1e-5)


def test_nearest_indices_follow_pytorch():
    assert nearest_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert nearest_indices(2, 4).tolist() == [0, 0, 1, 1]
    assert nearest_indices(8, 4).tolist() == [0, 2, 4, 6]
    assert nearest_indices(7, 7).tolist() == list(range(7))


@pytest.mark.parametrize("size_in,size_out", [((1, 1), (7, 7)), ((7, 7), (14, 28)), ((8, 8), (4, 2)),
                                              ((6, 6), (4, 4)), ((3, 5), (7, 2)), ((28, 28), (4, 4))])
def test_resizing_and_pooling_shortcuts_equal_the_index_and_bin_definitions(size_in, size_out):
    x = RNG.normal(size=(2, *size_in, 3))
    rows, cols = nearest_indices(size_in[0], size_out[0]), nearest_indices(size_in[1], size_out[1])
    np.testing.assert_array_equal(np.asarray(resize_nearest(f32(x), size_out)), f32(x)[:, rows][:, :, cols])
    if size_out[0] <= size_in[0] and size_out[1] <= size_in[1]:
        pooled = np.einsum("ih,jw,bhwc->bijc", adaptive_pool_matrix(size_in[0], size_out[0]),
                           adaptive_pool_matrix(size_in[1], size_out[1]), x)
        np.testing.assert_allclose(np.asarray(adaptive_average_pool(f32(x), size_out)), pooled, rtol=1e-5, atol=1e-6)


def test_abf_fusion_matches_numpy_with_the_layers_own_weights():
    teacher, student = tiny_case()
    loss = ReviewKDLoss(**NAMES, mid_channels=3)
    fusion = loss.build_fusion(T_SHAPES, S_SHAPES)
    assert [abf.fuse for abf in fusion.abfs] == [True, True, False]
    assert [abf.out_size for abf in fusion.abfs] == [(8, 8), (2, 2), (1, 1)]
    randomize_batchnorms(fusion)
    students = [student[k] for k in S_SHAPES]
    got = fusion(students, training=False)
    want = np_fusion(students, fusion)
    for level, (g, w, t) in enumerate(zip(got, want, T_SHAPES.values(), strict=True)):
        assert tuple(g.shape) == (2, *(t[1:] if len(t) == 4 else (1, 1, t[-1]))), level
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-5, err_msg=f"level {level}")
    # The loss is the ramped HCL of those outputs against the teacher's maps.
    value = call(loss, teacher, student, fusion, epoch=40)
    np.testing.assert_allclose(float(value), np_hcl(want, [teacher[k] for k in T_SHAPES]), rtol=1e-4)
    # Default width: min(512, channels of the student's deepest level).
    assert ReviewKDLoss(**NAMES).build_fusion(T_SHAPES, S_SHAPES).mid_channels == 6


def test_warmup_ramps_linearly_with_the_zero_based_epoch():
    loss = ReviewKDLoss(**NAMES)
    factors = [float(loss.warmup_factor(e)) for e in (0, 1, 9, 18, 19, 20, 200)]
    np.testing.assert_allclose(factors, [1 / 20, 2 / 20, 10 / 20, 19 / 20, 1.0, 1.0, 1.0], rtol=1e-6)
    assert float(ReviewKDLoss(**NAMES, warmup_epochs=0).warmup_factor(0)) == 1.0
    np.testing.assert_allclose(float(ReviewKDLoss(**NAMES, warmup_epochs=5).warmup_factor(tf.constant(1, "int64"))),
                               0.4, rtol=1e-6)
    teacher, student = tiny_case()
    fusion = loss.build_fusion(T_SHAPES, S_SHAPES)
    full = float(call(loss, teacher, student, fusion, epoch=30))
    assert full > 0
    np.testing.assert_allclose(float(call(loss, teacher, student, fusion, epoch=4)), 0.25 * full, rtol=1e-5)


def test_gradients_reach_every_abf_weight_and_every_student_level():
    teacher, student = tiny_case(1)
    loss = ReviewKDLoss(**NAMES)
    fusion = loss.build_fusion(T_SHAPES, S_SHAPES)
    variables = {k: tf.Variable(v) for k, v in student.items()}
    with tf.GradientTape() as tape:
        value = call(loss, teacher, variables, fusion, epoch=20, training=True)
    trainable = fusion.trainable_weights
    assert len(trainable) == 3 * 6 + 2 * 2  # conv1, bn1 (2), conv2, bn2 (2) per level; att kernel + bias but the deepest
    grads = tape.gradient(value, [*variables.values(), *trainable])
    for var, grad in zip([*variables, *(w.path for w in trainable)], grads, strict=True):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, var


def test_config_round_trip():
    loss = ReviewKDLoss(**NAMES, mid_channels=32, warmup_epochs=5, name="review")
    config = loss.get_config()
    assert config == {**NAMES, "mid_channels": 32, "warmup_epochs": 5, "name": "review"}
    clone = ReviewKDLoss.from_config(config)
    assert clone.get_config() == config
    assert clone.teacher_keys == ("t1", "t2", "t3") and clone.student_keys == ("s1", "s2", "s3")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is ReviewKDLoss and restored.get_config() == config
    assert losses.get("reviewkd", **NAMES).get_config() == {**NAMES, "warmup_epochs": 20}
    fusion = ReviewKDLoss(**NAMES).build_fusion(T_SHAPES, S_SHAPES)
    assert ReviewKDFusion.from_config(fusion.get_config()).teacher_shapes == [(8, 8, 5), (2, 2, 4), (1, 1, 7)]


def test_clear_errors():
    with pytest.raises(ValueError, match="give teacher_layer_names and student_layer_names"):
        ReviewKDLoss(teacher_layer_names=["stage1"])
    with pytest.raises(ValueError, match=re.escape("got 2 teacher_layer_names ['a', 'b'] and 1 student_layer_names")):
        ReviewKDLoss(teacher_layer_names=["a", "b"], student_layer_names=["a"])
    with pytest.raises(ValueError, match="must be a non-empty list of layer names"):
        ReviewKDLoss(teacher_layer_names="stage1", student_layer_names=["stage1"])
    with pytest.raises(ValueError, match="names a layer twice"):
        ReviewKDLoss(teacher_layer_names=["a", "a"], student_layer_names=["a", "b"])
    with pytest.raises(ValueError, match="`mid_channels` must be a positive integer"):
        ReviewKDLoss(**NAMES, mid_channels=0)
    with pytest.raises(ValueError, match="`warmup_epochs` must be an integer >= 0"):
        ReviewKDLoss(**NAMES, warmup_epochs=-1)
    with pytest.raises(ValueError, match="Bad arguments for loss 'reviewkd'"):
        losses.get("reviewkd", **NAMES, temperature=2.0)
    loss = ReviewKDLoss(**NAMES)
    with pytest.raises(ValueError, match=re.escape("the student's 's2' is (2, 2, 2, 6)")):
        loss.build_fusion(T_SHAPES, {**S_SHAPES, "s2": (2, 2, 2, 2, 6)})
    with pytest.raises(ValueError, match=re.escape("fixed map sizes; the teacher's 't1' is (None, None, 5)")):
        loss.check_tapped_shapes({**T_SHAPES, "t1": (None, None, None, 5)}, S_SHAPES)
    with pytest.raises(ValueError, match="use build_tapped_parts"):
        ReviewKDLoss(**NAMES).build_parts(T_SHAPES["t1"], S_SHAPES["s1"])
    assert ReviewKDLoss(**NAMES).build_tapped_parts(T_SHAPES, S_SHAPES).mid_channels == 6
    teacher, student = tiny_case()
    with pytest.raises(ValueError, match="needs its ABFs"):
        call(loss, teacher, student, None)
    fusion = loss.build_fusion(T_SHAPES, S_SHAPES)
    with pytest.raises(ValueError, match=re.escape("pass student_outputs={'s3': ...}")):
        call(loss, teacher, {"s1": student["s1"], "s2": student["s2"]}, fusion)
    # In a distiller: the term, the layer and its shape are named at construction.
    from conftest import tiny_model

    inputs = keras.Input((28, 28, 1))
    maps = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stage1")(inputs)
    tokens = keras.layers.Reshape((196, 4), name="tokens")(maps)
    logits = keras.layers.Dense(10, name="logits")(keras.layers.GlobalAveragePooling1D()(tokens))
    with pytest.raises(ValueError) as info:
        Distiller(teacher=tiny_model(name="teacher"), student=keras.Model(inputs, logits, name="student"),
                  distillation_losses=ReviewKDLoss(teacher_layer_names=["stage1", "embedding"],
                                                   student_layer_names=["stage1", "tokens"]))
    for part in ("Term 'reviewkd_loss' (ReviewKDLoss)", "cannot train", "the student's 'tokens' is (196, 4)"):
        assert part in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="'student' has no layer named 'stage9'"):
        Distiller(teacher=tiny_model(name="teacher"), student=tiny_model(name="student"),
                  distillation_losses=ReviewKDLoss(teacher_layer_names=["stage1"], student_layer_names=["stage9"]))


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_distiller_fit_trains_saves_and_never_exports_the_abfs(tmp_path):
    shape = (28, 28, 1)
    teacher = models.get("resnet8", input_shape=shape, num_classes=10)
    student = models.get("resnet8", input_shape=shape, num_classes=10)
    loss = losses.get("reviewkd", teacher_layer_names=["stage1_block0_add", "stage2_block0_add",
                                                       "stage3_block0_add", "embedding"],
                      student_layer_names=list(ZOO_STUDENT_LAYERS), warmup_epochs=1)
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=loss, student_loss_weight=1.0)
    assert set(distiller.teacher_view.output) == {"logits", *loss.teacher_layer_names}
    assert set(distiller.student_view.output) == {"logits", *ZOO_STUDENT_LAYERS}
    fusion = distiller.loss_parts["reviewkd_loss"]
    assert isinstance(fusion, ReviewKDFusion) and fusion.mid_channels == 64
    assert [abf.out_size + (abf.out_channels,) for abf in fusion.abfs] == [(28, 28, 16), (14, 14, 32), (7, 7, 64),
                                                                            (1, 1, 64)]
    x, y = RNG.normal(size=(4, *shape)).astype("float32"), np.arange(4) % 10

    # Gradients: the ABFs and the student, never the teacher (a constant for the distiller).
    with tf.GradientTape(persistent=True) as tape:
        terms = distiller.compute_terms(x, y, distiller(x, training=True, features=True), training=True)
        value = terms[1].value
    assert terms[1].name == "reviewkd_loss" and float(value) > 0
    assert all(g is None for g in tape.gradient(value, [w.value for w in teacher.trainable_weights]))
    for name in ZOO_STUDENT_LAYERS[:3]:
        conv = student.get_layer(f"{name}_block0_conv1")
        assert float(tf.reduce_max(tf.abs(tape.gradient(value, conv.kernel)))) > 0, name
    del tape

    before = [np.asarray(w).copy() for w in fusion.trainable_weights]
    teacher_before = [np.asarray(w).copy() for w in teacher.weights]
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0).history
    assert np.isfinite(history["reviewkd_loss"][0]) and history["reviewkd_loss"][0] > 0
    changed = [not np.allclose(b, np.asarray(w)) for b, w in zip(before, fusion.trainable_weights, strict=True)]
    assert all(changed), [w.path for w, c in zip(fusion.trainable_weights, changed, strict=True) if not c]
    for old, w in zip(teacher_before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, np.asarray(w))

    distiller.save(tmp_path / "reviewkd.keras")
    loaded = keras.models.load_model(tmp_path / "reviewkd.keras")
    assert loaded.distillation_losses[0].get_config() == loss.get_config()
    for saved, restored in zip(fusion.weights, loaded.loss_parts["reviewkd_loss"].weights, strict=True):
        np.testing.assert_array_equal(np.asarray(saved), np.asarray(restored))

    # The exported student is the plain ResNet8: same weights as a fresh one, no ABF in the file.
    fresh = models.get("resnet8", input_shape=shape, num_classes=10)
    assert [w.path for w in student.weights] == [w.path for w in fresh.weights]
    student.save(tmp_path / "student.keras")
    with zipfile.ZipFile(tmp_path / "student.keras") as archive:
        text = " ".join(archive.namelist()) + archive.read("config.json").decode()
    assert "abf" not in text and "fusion" not in text
    exported = keras.models.load_model(tmp_path / "student.keras")
    assert len(exported.weights) == len(fresh.weights)
    assert not any("abf" in w.path for w in exported.weights)


def test_suite_row_and_config_for_resnet8_from_resnet20():
    rows = dict(registry.suite_rows())
    (entry,) = rows["reviewkd"].losses
    assert entry == {"weight": 1.0, "teacher_layer_names": list(RESNET20_TEACHER_LAYERS),
                     "student_layer_names": list(ZOO_STUDENT_LAYERS)}
    assert rows["reviewkd"].student_loss_weight == 1.0
    from trainers.config import load_config
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "reviewkd_fmnist.yaml")
    (built,), weights = build_losses(config.method.losses)
    assert weights == [1.0] and config.method.student_loss_weight == 1.0
    assert built.get_config() == {k: v for k, v in entry.items() if k != "weight"} | {"warmup_epochs": 20}
    distiller = Distiller(teacher=models.get("resnet20", (16, 16, 1), 10), student=models.get("resnet8", (16, 16, 1), 10),
                          distillation_losses=built, student_loss_weight=1.0)
    fusion = distiller.loss_parts["reviewkd_loss"]
    assert fusion.teacher_shapes == [(16, 16, 16), (8, 8, 32), (4, 4, 64), (1, 1, 64)]
    assert fusion.mid_channels == 64
