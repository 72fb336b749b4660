"""Online Ensemble Model Compression (OEMC): builder, widths, losses, gradients, saving."""

from fractions import Fraction

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import models
from keras_kd.adapters import HintRegressor
from keras_kd.distillers.online import OnlineEnsembleDistiller
from keras_kd.models.layers import scale_channels
from keras_kd.models.online import STAGES, components, default_ratios, extract_student, online_ensemble

from conftest import np_cross_entropy, np_soft_target, tiny_model

SHAPE = (16, 16, 1)
RESNET8 = (16, 32, 64)  # stage widths


def images(n=6, seed=1):
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype("float32")


def distiller(num_students=3, **kwargs):
    return OnlineEnsembleDistiller(network="resnet8", input_shape=SHAPE, num_students=num_students, **kwargs)


def branch_outputs(network, x):
    """Every student's [stage1, stage2, stage3, logits] as numpy, inference mode."""
    base, branches, _ = components(network)
    stem = base(x, training=False)
    return [[t.numpy() for t in branch(stem, training=False)] for branch in branches]


def np_terms(outputs, parts, y, temperature, standardize=False):
    """Independent numpy reference of the three OEMC terms."""
    logits = [out[3].astype(np.float64) for out in outputs]
    ensemble = np.mean(logits, axis=0)
    ce = sum(np_cross_entropy(y, z) for z in logits)
    kd = sum(np_soft_target(ensemble, z, temperature, standardize) for z in logits)
    inter = 0.0
    for b, stage in enumerate(STAGES):
        target = outputs[0][b].astype(np.float64)
        for j in range(2, len(outputs) + 1):
            kernel = parts[f"student{j}_{stage}"].transform.kernel.numpy()[0, 0].astype(np.float64)  # (c_l, c_1)
            mapped = np.einsum("bhwc,cd->bhwd", outputs[j - 1][b].astype(np.float64), kernel)
            inter += np.mean((target - mapped) ** 2)
    return ce, inter, kd


def test_terms_match_numpy_for_three_students():
    d = distiller(3, ce_weight=0.5, inter_weight=0.3, kd_weight=0.2, temperature=3.0)
    d.compile(optimizer="sgd")
    x, y = images(6), np.array([0, 3, 9, 1, 1, 5])
    ce, inter, kd = np_terms(branch_outputs(d.student, x), d.loss_parts, y, 3.0)
    terms = d.compute_terms(x, y, d(x, training=False, features=True), training=False)
    values = {term.name: float(term.value) for term in terms}
    np.testing.assert_allclose([values["ce_loss"], values["inter_loss"], values["kd_loss"]], [ce, inter, kd], rtol=1e-4)
    logs = d.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["ce_loss"], ce, rtol=1e-4)
    np.testing.assert_allclose(logs["inter_loss"], inter, rtol=1e-4)
    np.testing.assert_allclose(logs["kd_loss"], kd, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 0.5 * ce + 0.3 * inter + 0.2 * kd, rtol=1e-4)
    assert inter > 0 and kd > 0
    expected_metrics = {"loss", "ce_loss", "inter_loss", "kd_loss", "accuracy"}
    assert set(logs) == expected_metrics | {f"student{j}_accuracy" for j in (1, 2, 3)}
    assert d.temperature == 3.0


def test_kd_term_of_standardized_logits_matches_numpy():
    d = distiller(3, temperature=3.0, logit_standardization=True)
    x, y = images(6), np.array([0, 3, 9, 1, 1, 5])
    outputs = branch_outputs(d.student, x)
    _, _, kd = np_terms(outputs, d.loss_parts, y, 3.0, standardize=True)
    terms = {t.name: float(t.value) for t in d.compute_terms(x, y, d(x, training=False, features=True), False)}
    np.testing.assert_allclose(terms["kd_loss"], kd, rtol=1e-4)
    assert not np.isclose(kd, np_terms(outputs, d.loss_parts, y, 3.0)[2], rtol=1e-2)
    config = d.get_config()
    assert config["logit_standardization"] is True
    assert OnlineEnsembleDistiller.from_config(config).logit_standardization


def test_default_weights_and_adapter_shapes():
    d = distiller(4)
    assert (d.ce_weight, d.inter_weight, d.kd_weight, d.temperature) == (1.0, 0.15, 0.15, 2.0)
    assert sorted(d.loss_parts) == sorted(f"student{j}_{s}" for j in (2, 3, 4) for s in STAGES)
    for j in (2, 3, 4):
        for stage, channels in zip(STAGES, RESNET8, strict=True):
            part = d.loss_parts[f"student{j}_{stage}"]
            assert isinstance(part, HintRegressor)
            assert part.norm is None and part.act is None  # a plain 1x1 channel map
            kernel = part.transform.kernel
            assert tuple(kernel.shape) == (1, 1, channels * (4 - j + 1) // 4, channels)
            assert not part.transform.use_bias
            assert [w.path for w in part.weights] == [kernel.path]


def gradients(d, x, y):
    with tf.GradientTape() as tape:
        terms = d.compute_terms(x, y, d(x, training=True, features=True), training=True)
        total = sum(term.weight * term.value for term in terms)
    # Keyed by identity: variable paths repeat across branches (same zoo layer names).
    return dict(zip(map(id, d.trainable_variables), tape.gradient(total, d.trainable_variables), strict=True))


def nonzero(grad):
    return grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0


def test_adapters_are_trainable_get_gradients_and_are_not_in_the_network():
    d = distiller(3)
    x, y = images(4), np.arange(4)
    trainable = {id(v) for v in d.trainable_variables}
    network = {id(v) for v in d.student.weights}
    adapter_vars = [v for a in d.loss_parts.values() for v in a.trainable_variables]
    assert len(adapter_vars) == 6
    assert all(id(v) in trainable and id(v) not in network for v in adapter_vars)
    assert len(d.trainable_variables) == len(d.student.trainable_variables) + 6  # no duplicates
    grads = gradients(d, x, y)
    assert all(nonzero(grads[id(v)]) for v in adapter_vars)
    assert all(nonzero(grads[id(v)]) for v in d.student.trainable_variables)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
def test_intermediate_term_sends_no_gradient_to_the_pseudo_teacher():
    d = distiller(3, ce_weight=0.0, kd_weight=0.0, inter_weight=1.0)
    x, y = images(4), np.arange(4)
    grads = gradients(d, x, y)
    base, branches, _ = components(d.student)
    for v in branches[0].trainable_variables:
        assert not nonzero(grads[id(v)]), v.path
    for branch in branches[1:]:  # every stage of the smaller students is pulled, except their heads
        body = [v for v in branch.trainable_variables if not v.path.startswith("logits")]
        assert any(nonzero(grads[id(v)]) for v in body)
        assert not any(nonzero(grads[id(v)]) for v in branch.get_layer("logits").trainable_variables)
    assert all(nonzero(grads[id(v)]) for a in d.loss_parts.values() for v in a.trainable_variables)
    assert any(nonzero(grads[id(v)]) for v in base.trainable_variables)  # the shared stem is trained

    # A real train step changes no trainable weight of the pseudo teacher's branch.
    d.compile(optimizer=keras.optimizers.SGD(0.1))
    before = [v.numpy() for v in branches[0].trainable_variables]
    others = [v.numpy() for v in branches[1].get_layer("stage1_block0_conv1").trainable_variables]
    d.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for old, v in zip(before, branches[0].trainable_variables, strict=True):
        np.testing.assert_array_equal(old, v.numpy())
    changed = branches[1].get_layer("stage1_block0_conv1").trainable_variables
    assert any(not np.array_equal(o, v.numpy()) for o, v in zip(others, changed, strict=True))


def test_extracted_students_match_the_ensemble():
    network = online_ensemble("resnet8", SHAPE, 10, num_students=3)
    x = images(5)
    inside = branch_outputs(network, x)
    students = [extract_student(network, j) for j in (1, 2, 3)]
    for j, (student, out) in enumerate(zip(students, inside, strict=True), start=1):
        assert student.name == f"student{j}"
        np.testing.assert_allclose(student(x, training=False).numpy(), out[3], atol=1e-6)
    ensemble = network(x, training=False).numpy()
    np.testing.assert_allclose(ensemble, np.mean([out[3] for out in inside], axis=0), atol=1e-6)
    d = OnlineEnsembleDistiller(network=network)
    assert d.ensemble_model() is network
    np.testing.assert_allclose(d.predict(x, verbose=0), ensemble, atol=1e-6)
    features = d(x, training=False, features=True)
    for j, out in enumerate(inside, start=1):
        np.testing.assert_allclose(d.student_model(j)(x).numpy(), out[3], atol=1e-6)
        np.testing.assert_allclose(features[f"student{j}"].numpy(), out[3], atol=1e-6)
        for b, stage in enumerate(STAGES):
            np.testing.assert_allclose(features[f"student{j}_{stage}"].numpy(), out[b], atol=1e-6)
    # Students share weights with the ensemble: smaller students have fewer parameters.
    sizes = [s.count_params() for s in d.student_models()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 3
    assert students[0].count_params() == models.get("resnet8", SHAPE, 10).count_params()


@pytest.mark.parametrize("num_students", [5, 2, 4])
def test_branch_widths_follow_integer_formula(num_students):
    network = online_ensemble("resnet8", SHAPE, 10, num_students=num_students)
    base, branches, _ = components(network)
    assert base.output.shape[-1] == 16  # the stem is shared and never narrowed
    for j, branch in enumerate(branches):
        for stage, c in enumerate(RESNET8, start=1):
            width = c * (num_students - j) // num_students
            assert branch.get_layer(f"stage{stage}_block0_conv1").kernel.shape[-1] == width
            assert branch.get_layer(f"stage{stage}_block0_conv2").kernel.shape[-2:] == (width, width)
            assert branch.output[stage - 1].shape[-1] == width
        assert branch.get_layer("logits").kernel.shape == (RESNET8[2] * (num_students - j) // num_students, 10)


def test_custom_ratios_and_zoo_width_ratio():
    network = online_ensemble("resnet8", SHAPE, 10, width_ratios=[1, Fraction(2, 3), 0.25])
    widths = [[b.output[s].shape[-1] for s in range(3)] for b in components(network)[1]]
    assert widths == [[16, 32, 64], [10, 21, 42], [4, 8, 16]]
    for c in range(1, 300):
        for j in range(7):
            assert scale_channels(c, Fraction(7 - j, 7)) == max(1, c * (7 - j) // 7)
    assert scale_channels(100, Fraction(29, 100)) == 29
    assert scale_channels(3, Fraction(1, 5)) == 1
    wrn = models.get("wrn_16_2", SHAPE, 10, width_ratio=Fraction(2, 3))
    assert [wrn.get_layer(f"stage{s}").output.shape[-1] for s in (1, 2, 3)] == [21, 42, 85]
    assert wrn.get_layer("stem").output.shape[-1] == 16
    cnn = models.get("cnn", SHAPE, 10, width_ratio=0.5)
    assert [cnn.get_layer(f"stage{s}").output.shape[-1] for s in (1, 2, 3)] == [16, 32, 64]
    assert cnn.get_layer("stem").output.shape[-1] == 16
    for name in ("resnet8", "wrn_16_1", "cnn"):
        same = models.get(name, SHAPE, 10, width_ratio=Fraction(1))
        assert same.count_params() == models.get(name, SHAPE, 10).count_params()
    with pytest.raises(ValueError, match="> 0"):
        models.get("resnet8", SHAPE, 10, width_ratio=0)
    with pytest.raises(TypeError, match="width_ratio"):
        models.get("resnet8", SHAPE, 10, width_ratio="1/2")


def test_clear_errors():
    for bad in (1, 0, -1):
        with pytest.raises(ValueError, match=r"needs `num_students` >= 2 \(a pseudo teacher"):
            online_ensemble("resnet8", SHAPE, num_students=bad)
    with pytest.raises(TypeError, match="`num_students` must be an integer >= 2, got 2.0"):
        online_ensemble("resnet8", SHAPE, num_students=2.0)
    assert default_ratios(np.int64(3)) == (1, Fraction(2, 3), Fraction(1, 3))  # e.g. read from an array
    with pytest.raises(ValueError, match="num_students"):
        online_ensemble("resnet8", SHAPE, width_ratios=[1])
    with pytest.raises(ValueError, match="strictly decrease"):
        online_ensemble("resnet8", SHAPE, width_ratios=[1, 0.5, 0.5])
    with pytest.raises(ValueError, match="strictly decrease"):
        online_ensemble("resnet8", SHAPE, width_ratios=[1, 0.25, 0.5])
    with pytest.raises(ValueError, match="must be 1"):
        online_ensemble("resnet8", SHAPE, width_ratios=[0.9, 0.5])
    for bad in ([1, 0], [1, -0.5], [1, Fraction(3, 2)]):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            online_ensemble("resnet8", SHAPE, width_ratios=bad)
    with pytest.raises(TypeError, match="Width ratios"):
        online_ensemble("resnet8", SHAPE, width_ratios=[1, "1/2"])
    with pytest.raises(ValueError, match="disagrees"):
        online_ensemble("resnet8", SHAPE, num_students=3, width_ratios=[1, 0.5])
    with pytest.raises(ValueError, match="Unknown model"):
        online_ensemble("resnet7x", SHAPE)
    with pytest.raises(ValueError, match="'stage2', 'stage3'"):  # stem, stage1, logits only
        online_ensemble(lambda ratio: tiny_model(10, SHAPE), num_students=2)
    with pytest.raises(ValueError, match="not an online ensemble"):
        OnlineEnsembleDistiller(network=models.get("resnet8", SHAPE, 10))
    network = online_ensemble("resnet8", SHAPE, 10, num_students=2)
    with pytest.raises(ValueError, match="zoo name"):
        OnlineEnsembleDistiller(network=network, num_students=2)
    with pytest.raises(ValueError, match="zero"):
        OnlineEnsembleDistiller(network=network, ce_weight=0, inter_weight=0, kd_weight=0)
    with pytest.raises(ValueError, match="temperature"):
        OnlineEnsembleDistiller(network=network, temperature=0)
    with pytest.raises(TypeError, match="online_ensemble"):
        OnlineEnsembleDistiller(network=3)
    for bad in (0, 3, -1):
        with pytest.raises(ValueError, match=r"`index` must be in 1\.\.2 \(the students of .*; 1 is the pseudo "):
            extract_student(network, bad)
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError, match=r"`index` must be an integer in 1\.\.2"):
            extract_student(network, bad)
    widths = [extract_student(network, k).count_params() for k in (1, 2)]
    assert widths[0] > widths[1] and extract_student(network, np.int64(2)).count_params() == widths[1]


def test_save_load_round_trip(tmp_path):
    d = distiller(3, ce_weight=0.6, inter_weight=0.3, kd_weight=0.1, temperature=4.0)
    d.compile(optimizer="adam")
    x, y = images(8), np.arange(8)
    d.fit(x, y, batch_size=4, epochs=1, verbose=0)
    d.save(tmp_path / "oemc.keras")
    loaded = keras.models.load_model(tmp_path / "oemc.keras")
    assert isinstance(loaded, OnlineEnsembleDistiller)
    assert (loaded.ce_weight, loaded.inter_weight, loaded.kd_weight, loaded.temperature) == (0.6, 0.3, 0.1, 4.0)
    assert loaded.num_students == 3
    np.testing.assert_allclose(loaded(x).numpy(), d(x).numpy(), atol=1e-6)
    assert len(loaded.optimizer.variables) == len(d.optimizer.variables)
    for new, old in zip(loaded.optimizer.variables, d.optimizer.variables, strict=True):
        np.testing.assert_array_equal(new.numpy(), old.numpy())
    assert sorted(loaded.loss_parts) == sorted(d.loss_parts)
    for key, part in d.loss_parts.items():
        np.testing.assert_array_equal(loaded.loss_parts[key].transform.kernel.numpy(), part.transform.kernel.numpy())
    for j in (1, 2, 3):
        np.testing.assert_allclose(loaded.student_model(j)(x).numpy(), d.student_model(j)(x).numpy(), atol=1e-6)
    logs = d.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    reloaded = loaded.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    for key, value in logs.items():
        np.testing.assert_allclose(reloaded[key], value, rtol=1e-5, err_msg=key)
    student = d.student_model(2)
    student.save(tmp_path / "student2.keras")
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "student2.keras")(x).numpy(), student(x).numpy(), atol=1e-6
    )


def test_inter_term_can_leave_the_shared_stem_to_the_other_terms():
    """`inter_updates_stem=False` (the paper): L_inter trains the compressed branches
    and adapters only; the stem gets exactly the CE + KD update."""
    x, y = images(4), np.arange(4)
    weights = dict(ce_weight=0.7, inter_weight=0.15, kd_weight=0.15, inter_updates_stem=False)
    restricted = distiller(3, **weights)
    without_inter = distiller(3, **{**weights, "inter_weight": 0.0})
    without_inter.set_weights(restricted.get_weights())
    for d in (restricted, without_inter):
        d.compile(optimizer=keras.optimizers.SGD(0.1))
        d.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False)
    stems = [components(d.student)[0].trainable_variables for d in (restricted, without_inter)]
    for a, b in zip(*stems, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    branch = [components(d.student)[1][1].get_layer("stage1_block0_conv1").kernel.numpy()
              for d in (restricted, without_inter)]
    assert np.abs(branch[0] - branch[1]).max() > 1e-7  # L_inter still trains student 2
    default = distiller(3, ce_weight=0.0, kd_weight=0.0, inter_weight=1.0)
    assert default.inter_updates_stem and not restricted.get_config()["inter_updates_stem"]
