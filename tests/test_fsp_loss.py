"""FSP (Yim et al., CVPR 2017) against numpy references written from the paper
(with the CRD benchmark's mean over matrix entries), and its two taps per
network in one distiller pass."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, losses, models, registry
from keras_kd.losses.fsp import ZOO_PAIRS, FSPLoss, fsp_matrix
from keras_kd.methods.kd import build_losses
from keras_kd.registry import PRETRAIN_EPOCHS

from conftest import tiny_model

RNG = np.random.default_rng(0)
NAMES = dict(teacher_first_layer_name="stage1", teacher_layer_name="stage2",
             student_first_layer_name="stage1", student_layer_name="stage2")


def np_pool(f, size):
    b, h, w, c = f.shape
    k = h // size
    return f.reshape(b, size, k, size, k, c).mean(axis=(2, 4))


def np_fsp(first, second):
    """G_ij = sum over positions of F1_i * F2_j / (h * w), the larger map pooled to the smaller."""
    size = min(first.shape[1], second.shape[1])
    first, second = np_pool(first, size), np_pool(second, size)
    b, h, w, c1 = first.shape
    c2 = second.shape[-1]
    g = np.zeros((b, c1, c2))
    for n in range(b):
        for i in range(c1):
            for j in range(c2):
                g[n, i, j] = np.sum(first[n, :, :, i] * second[n, :, :, j]) / (h * w)
    return g


def np_fsp_loss(t1, t2, s1, s2):
    return np.mean((np_fsp(t1, t2) - np_fsp(s1, s2)) ** 2)


def call(loss, t1, t2, s1, s2):
    f32 = lambda a: np.asarray(a, "float32")  # noqa: E731
    return float(loss(f32(t2), f32(s2), teacher_outputs={loss.teacher_first_layer_name: f32(t1)},
                      student_outputs={loss.student_first_layer_name: f32(s1)}))


def test_fsp_matrix_by_hand_and_against_numpy():
    first = np.ones((1, 2, 2, 1), "float32")
    second = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)  # channel 0: 0 2 4 6, channel 1: 1 3 5 7
    np.testing.assert_allclose(fsp_matrix(first, second).numpy(), [[[3.0, 4.0]]])
    a, b = RNG.normal(size=(3, 8, 8, 4)), RNG.normal(size=(3, 4, 4, 6))
    np.testing.assert_allclose(fsp_matrix(a.astype("float32"), b.astype("float32")).numpy(), np_fsp(a, b),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fsp_matrix(b.astype("float32"), a.astype("float32")).numpy(), np_fsp(b, a),
                               rtol=1e-4, atol=1e-6)  # the second map may be the larger one


def test_fsp_loss_matches_numpy_with_different_spatial_sizes():
    t1, t2 = RNG.normal(size=(4, 8, 8, 3)), RNG.normal(size=(4, 4, 4, 5))  # teacher: pooled 8x8 -> 4x4
    s1, s2 = RNG.normal(size=(4, 4, 4, 3)), RNG.normal(size=(4, 2, 2, 5))  # student: other sizes, same channels
    loss = FSPLoss(**NAMES)
    value = call(loss, t1, t2, s1, s2)
    np.testing.assert_allclose(value, np_fsp_loss(t1, t2, s1, s2), rtol=1e-4)
    assert value > 0
    assert call(loss, t1, t2, t1, t2) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")  # the logits layer: CE is weighted 0
def test_gradient_reaches_both_student_maps_and_the_teacher_is_a_constant_in_a_distiller():
    loss = FSPLoss(**NAMES)
    t1, t2 = (tf.constant(RNG.normal(size=s), "float32") for s in ((2, 4, 4, 3), (2, 2, 2, 5)))
    s1, s2 = (tf.Variable(RNG.normal(size=s), dtype="float32") for s in ((2, 4, 4, 3), (2, 2, 2, 5)))
    with tf.GradientTape() as tape:
        value = loss(t2, s2, teacher_outputs={"stage1": t1}, student_outputs={"stage1": s1})
    for grad in tape.gradient(value, [s1, s2]):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0

    teacher, student = tiny_model(width=4, name="teacher"), tiny_model(width=4, name="student")
    pair = dict(teacher_first_layer_name="stem", teacher_layer_name="stage1",
                student_first_layer_name="stem", student_layer_name="stage1")
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=FSPLoss(**pair),
                          distillation_loss_weights=1.0, student_loss_weight=0.0)
    x, y = RNG.normal(size=(8, 28, 28, 1)).astype("float32"), np.arange(8) % 10
    watched = [v.value for v in teacher.weights if "kernel" in v.path]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(watched)
        terms = distiller.compute_terms(x, y, distiller(x, training=True, features=True), training=True)
        fsp = terms[1].value
    assert terms[1].name == "fsp_loss" and float(fsp) > 0
    assert all(g is None for g in tape.gradient(fsp, watched))
    stem = tape.gradient(fsp, student.get_layer("stem").kernel)
    assert stem is not None and float(tf.reduce_max(tf.abs(stem))) > 0
    before = [w.numpy().copy() for w in teacher.weights]
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for old, w in zip(before, teacher.weights, strict=True):
        np.testing.assert_array_equal(old, w.numpy())


def test_two_taps_per_network_in_one_distiller_pass_match_numpy():
    teacher, student = tiny_model(width=4, name="teacher"), tiny_model(width=4, name="student")
    pair = dict(teacher_first_layer_name="stem", teacher_layer_name="stage1",
                student_first_layer_name="stem", student_layer_name="stage1")
    loss = losses.get("fsp", **pair)
    distiller = Distiller(teacher=teacher, student=student, distillation_losses=loss, student_loss_weight=1.0)
    assert set(distiller.teacher_view.output) == {"logits", "stem", "stage1"}
    assert set(distiller.student_view.output) == {"logits", "stem", "stage1"}
    distiller.compile(optimizer="sgd")
    x, y = RNG.normal(size=(8, 28, 28, 1)).astype("float32"), np.arange(8) % 10
    logs = distiller.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)

    def maps(model):
        view = keras.Model(model.inputs[0], [model.get_layer("stem").output, model.get_layer("stage1").output])
        return [np.asarray(m, np.float64) for m in view(x, training=False)]

    np.testing.assert_allclose(logs["fsp_loss"], np_fsp_loss(*maps(teacher), *maps(student)), rtol=1e-4)
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["fsp_loss"][0]) and history["fsp_loss"][0] > 0


def test_zoo_pairs_for_resnet8_from_resnet20_and_the_suite_row():
    terms = [losses.get("fsp", teacher_first_layer_name=a, teacher_layer_name=b,
                        student_first_layer_name=a, student_layer_name=b) for a, b in ZOO_PAIRS]
    distiller = Distiller(teacher=models.get("resnet20", (16, 16, 1), 10), student=models.get("resnet8", (16, 16, 1), 10),
                          distillation_losses=terms, student_loss_weight=1.0)
    assert distiller.loss_names == ["fsp_loss_stage1", "fsp_loss_stage2", "fsp_loss_stage3"]
    assert set(distiller.teacher_view.output) == {"logits", "stem", "stage1", "stage2", "stage3"}
    rows = dict(registry.suite_rows())
    assert rows["fsp"].losses[1] == {"weight": 1.0, "teacher_first_layer_name": "stage1", "teacher_layer_name": "stage2",
                                     "student_first_layer_name": "stage1", "student_layer_name": "stage2",
                                     "active_epochs": [0, PRETRAIN_EPOCHS]}
    # RepDistiller's recipe: FSP alone for the init stage, then CE alone
    assert rows["fsp"].stage_epochs(120) == 30
    assert [spec["active_epochs"] for spec in rows["fsp"].loss_specs("fsp", 120)] == [[0, 30]] * 3
    from trainers.config import load_config
    from trainers.quickstart import CONFIGS

    config = load_config(CONFIGS / "fsp_fmnist.yaml")
    built, weights = build_losses(config.method.losses)
    assert [type(b) for b in built] == [FSPLoss] * 3 and weights == [1.0] * 3
    assert [(b.student_first_layer_name, b.student_layer_name) for b in built] == list(ZOO_PAIRS)
    assert config.method.options["student_loss_start_epoch"] == 30
    assert [b.active_epochs for b in built] == [(0, 30)] * 3


def test_config_round_trip():
    loss = FSPLoss(name="fsp_12", **NAMES)
    config = loss.get_config()
    assert config == {**NAMES, "name": "fsp_12"}
    clone = FSPLoss.from_config(config)
    assert clone.get_config() == config and clone.teacher_keys == ("stage2", "stage1")
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is FSPLoss and restored.get_config() == config
    assert restored.student_keys == ("stage2", "stage1")


def test_clear_errors():
    with pytest.raises(ValueError, match="missing teacher_first_layer_name, student_first_layer_name"):
        FSPLoss(teacher_layer_name="stage2", student_layer_name="stage2")
    with pytest.raises(ValueError, match="missing teacher_layer_name"):
        FSPLoss(teacher_first_layer_name="stage1", student_first_layer_name="stage1", student_layer_name="stage2")
    with pytest.raises(ValueError, match="`student_first_layer_name` must be a layer name"):
        FSPLoss(**{**NAMES, "student_first_layer_name": ""})
    with pytest.raises(ValueError, match="Bad arguments for loss 'fsp'"):
        losses.get("fsp", **NAMES, temperature=2.0)

    loss = FSPLoss(**NAMES)
    # Different channel counts: matrices of different shapes, every shape named.
    message = ("FSP compares (C1 x C2) matrices of the same shape, but the teacher 'stage1' (4, 4, 3) x 'stage2' "
               "(2, 2, 5) gives 3x5 and the student 'stage1' (4, 4, 3) x 'stage2' (2, 2, 4) gives 3x4")
    with pytest.raises(ValueError, match=re.escape(message)):
        call(loss, RNG.normal(size=(2, 4, 4, 3)), RNG.normal(size=(2, 2, 2, 5)),
             RNG.normal(size=(2, 4, 4, 3)), RNG.normal(size=(2, 2, 2, 4)))
    with pytest.raises(ValueError, match=re.escape("FSP cannot pool student 'stage1' (6, 6, 3) and 'stage2' (4, 4, 5)")):
        call(loss, RNG.normal(size=(2, 4, 4, 3)), RNG.normal(size=(2, 2, 2, 5)),
             RNG.normal(size=(2, 6, 6, 3)), RNG.normal(size=(2, 4, 4, 5)))
    with pytest.raises(ValueError, match=re.escape("FSP needs (batch, H, W, C) feature maps; got teacher (5,)")):
        loss.check_shapes((None, 5), (None, 4, 4, 5))
    with pytest.raises(ValueError, match=re.escape("pass student_outputs={'stage1': ...}")):
        loss(np.zeros((2, 2, 2, 5)), np.zeros((2, 2, 2, 5)), teacher_outputs={"stage1": np.zeros((2, 4, 4, 3))})

    # At construction, in a distiller: the term, both outputs and every shape are named.
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    pair = dict(teacher_first_layer_name="stem", teacher_layer_name="stage1",
                student_first_layer_name="stem", student_layer_name="stage1")
    with pytest.raises(ValueError) as info:
        Distiller(teacher=teacher, student=student, distillation_losses=FSPLoss(**pair))
    text = str(info.value)
    for part in ("Term 'fsp_loss' (FSPLoss)", "teacher 'stem' (14, 14, 8) x 'stage1' (14, 14, 8) gives 8x8",
                 "student 'stem' (14, 14, 4) x 'stage1' (14, 14, 4) gives 4x4", "cannot train"):
        assert part in text, text
    with pytest.raises(ValueError, match="'student' has no layer named 'stage9'"):
        Distiller(teacher=tiny_model(width=4, name="teacher"), student=tiny_model(width=4, name="student"),
                  distillation_losses=FSPLoss(**{**pair, "student_first_layer_name": "stage9"}))
