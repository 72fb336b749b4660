"""EKD: multi-branch student, EnsembleDistiller loss, teacher-output cache, ensemble export."""

import keras
import numpy as np
import pytest

from keras_kd import EnsembleDistiller, data, models
from keras_kd.taps import tap_model

from conftest import np_cross_entropy, np_log_softmax, np_soft_target

SHAPE = (16, 16, 1)


def np_l2n(v):
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def make_teachers(names, shape=SHAPE):
    return [models.get(name, shape, 10) for name in names]


@pytest.mark.parametrize(
    "teacher_names,embedding_adapter,branch_weighting,standardize",
    [(("resnet8", "cnn"), "if_needed", "mean", False),
     (("cnn", "resnet8", "wrn_16_1"), "if_needed", "mean", False),
     (("resnet8", "cnn"), "always", "sum", False),
     (("resnet8", "cnn"), "always", "sum", True)],
)
def test_loss_matches_numpy(teacher_names, embedding_adapter, branch_weighting, standardize):
    teachers = make_teachers(teacher_names)
    n = len(teachers)
    student = models.multibranch("resnet8", n, SHAPE, 10)
    temperatures, alphas, betas = [2.0, 4.0, 3.0][:n], [1.0, 0.5, 2.0][:n], [1.0, 3.0, 0.5][:n]
    distiller = EnsembleDistiller(
        teachers=teachers, student=student, temperature=temperatures, alpha=alphas, beta=betas,
        ce_weight=0.7, ensemble_weight=1.3, embedding_adapter=embedding_adapter, branch_weighting=branch_weighting,
        logit_standardization=standardize,
    )
    share = 1.0 / n if branch_weighting == "mean" else 1.0
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, *SHAPE)).astype("float32")
    y = np.array([0, 3, 9, 1, 3, 5], "int32")
    outputs = distiller(x, training=False, features=True)
    terms = {t.name: (t.weight, float(t.value)) for t in distiller.compute_terms(x, y, outputs, training=False)}

    branch_view = tap_model(student, [f"branch{i}" for i in range(1, n + 1)] + [f"branch{i}_embedding" for i in range(1, n + 1)])
    s = {k: np.asarray(v, np.float64) for k, v in branch_view(x, training=False).items()}
    expected = {"ensemble_ce_loss": (1.3, np_cross_entropy(y, np.mean([s[f"branch{i}"] for i in range(1, n + 1)], 0)))}
    for i, teacher in enumerate(teachers, start=1):
        t = {k: np.asarray(v, np.float64) for k, v in tap_model(teacher, ["embedding"])(x, training=False).items()}
        h = s[f"branch{i}_embedding"]
        adapter = distiller.loss_parts.get(f"branch{i}_embedding_loss")
        if embedding_adapter == "always" or h.shape[-1] != t["embedding"].shape[-1]:  # the Dense adapter
            assert adapter is not None and not adapter.use_bias
            h = h @ np.asarray(adapter.kernel, np.float64)
        else:
            assert adapter is None
        embedding = np.mean(np.sum((np_l2n(h) - np_l2n(t["embedding"])) ** 2, -1))
        expected[f"branch{i}_ce_loss"] = (0.7 * share, np_cross_entropy(y, s[f"branch{i}"]))
        kd = np_soft_target(t["logits"], s[f"branch{i}"], temperatures[i - 1], standardize)
        if standardize:
            assert kd != pytest.approx(np_soft_target(t["logits"], s[f"branch{i}"], temperatures[i - 1]), rel=1e-2)
        expected[f"branch{i}_kd_loss"] = (alphas[i - 1] * share, kd)
        expected[f"branch{i}_embedding_loss"] = (betas[i - 1] * share, embedding)
    assert terms.keys() == expected.keys()
    for name, (weight, value) in expected.items():
        assert terms[name][0] == pytest.approx(weight), name
        assert terms[name][1] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    total = sum(w * v for w, v in expected.values())
    got = float(distiller._total(distiller.compute_terms(x, y, outputs, training=False)))
    assert got == pytest.approx(total, rel=1e-4)
    distiller.compile(optimizer="sgd")
    logs = distiller.evaluate(x, y, batch_size=6, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(total, rel=1e-4)
    for name, (_, value) in expected.items():
        assert logs[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name


def test_new_options_are_checked_and_saved(tmp_path):
    teachers = make_teachers(("resnet8", "resnet8"))
    student = models.multibranch("resnet8", 2, SHAPE, 10)
    with pytest.raises(ValueError, match="branch_weighting"):
        EnsembleDistiller(teachers=teachers, student=student, branch_weighting="max")
    with pytest.raises(ValueError, match="adapter"):
        EnsembleDistiller(teachers=teachers, student=student, embedding_adapter="sometimes")
    distiller = EnsembleDistiller(teachers=teachers, student=student, embedding_adapter="always",
                                  branch_weighting="sum")
    assert sorted(distiller.loss_parts) == ["branch1_embedding_loss", "branch2_embedding_loss"]
    x = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype("float32")
    distiller.compile(optimizer="sgd")
    distiller.fit(x, np.arange(4), epochs=1, verbose=0)
    distiller.save(tmp_path / "ekd.keras")
    loaded = keras.models.load_model(tmp_path / "ekd.keras")
    assert (loaded.embedding_adapter, loaded.branch_weighting) == ("always", "sum")
    for key, part in distiller.loss_parts.items():
        np.testing.assert_array_equal(np.asarray(loaded.loss_parts[key].kernel), np.asarray(part.kernel))
    assert int(loaded.optimizer.iterations) == 1


def test_softmax_ensemble_is_log_of_mean_probability():
    student = models.multibranch("resnet8", 3, SHAPE, 10, ensemble="softmax")
    x = np.random.default_rng(0).normal(size=(4, *SHAPE)).astype("float32")
    branches = tap_model(student, ["branch1", "branch2", "branch3"])(x, training=False)
    probs = np.mean([np.exp(np_log_softmax(np.asarray(branches[f"branch{i}"], np.float64))) for i in (1, 2, 3)], 0)
    np.testing.assert_allclose(np.exp(np_log_softmax(np.asarray(student(x), np.float64))), probs, atol=1e-6)


def test_gradients_reach_every_branch_and_adapter_and_no_teacher():
    teachers = make_teachers(("resnet8", "cnn", "resnet8"))
    student = models.multibranch("resnet8", 3, SHAPE, 10)
    distiller = EnsembleDistiller(teachers=teachers, student=student, embedding_adapter="if_needed")
    teacher_ids = {id(v) for t in teachers for v in t.weights}
    assert not teacher_ids & {id(v) for v in distiller.trainable_variables}
    x = np.random.default_rng(0).normal(size=(8, *SHAPE)).astype("float32")
    y = np.arange(8) % 10
    import tensorflow as tf

    with tf.GradientTape() as tape:
        outputs = distiller(x, training=True, features=True)
        total = distiller._total(distiller.compute_terms(x, y, outputs, training=True))
    grads = tape.gradient(total, distiller.trainable_variables)
    norms = {id(v): float(tf.norm(g)) for v, g in zip(distiller.trainable_variables, grads, strict=True) if g is not None}
    parts = {name: student.get_layer(name) for name in ("shared_stem", "branch1_body", "branch2_body", "branch3_body")}
    parts["branch1_head"] = student.get_layer("branch1_head")
    parts["adapter of the cnn teacher"] = distiller.loss_parts["branch2_embedding_loss"]
    assert sorted(distiller.loss_parts) == ["branch2_embedding_loss"]  # resnet8 teachers share the branch width
    student_ids = {id(v) for v in student.weights}
    assert not student_ids & {id(v) for v in parts["adapter of the cnn teacher"].weights}
    for part, layer in parts.items():
        assert all(norms.get(id(v), 0) > 0 for v in layer.trainable_variables if "gamma" not in v.path), part
    before = [np.array(w) for t in teachers for w in t.weights]
    distiller.compile(optimizer="sgd")
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    after = [np.array(w) for t in teachers for w in t.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_teacher_count_must_match_branches_and_lists_match_teachers():
    student = models.multibranch("resnet8", 3, SHAPE, 10)
    with pytest.raises(ValueError, match="3 branches but 2 teachers"):
        EnsembleDistiller(teachers=make_teachers(("cnn", "cnn")), student=student)
    with pytest.raises(ValueError, match="`temperature` has 2 values but there are 3 teachers"):
        EnsembleDistiller(teachers=make_teachers(("cnn",) * 3), student=student, temperature=[1.0, 2.0])
    with pytest.raises(ValueError, match="not a keras_kd multi-branch student"):
        EnsembleDistiller(teachers=make_teachers(("cnn",)), student=models.get("resnet8", SHAPE, 10))
    wrong = [models.get("cnn", SHAPE, 10), models.get("cnn", SHAPE, 7), models.get("cnn", SHAPE, 10)]
    with pytest.raises(ValueError, match="predicts 7 classes"):
        EnsembleDistiller(teachers=wrong, student=student)
    with pytest.raises(TypeError, match="needs `teachers=\\[...\\]`"):
        EnsembleDistiller(teachers=[], student=student)


def test_ensemble_export_equals_mean_of_branches_keras_and_tflite(tmp_path):
    from keras_kd import export

    student = models.multibranch("resnet8", 3, SHAPE, 10)
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype("float32")
    branches = [models.extract_branch(student, i) for i in (1, 2, 3)]
    mean = np.mean([np.asarray(b(x)) for b in branches], axis=0)
    np.testing.assert_allclose(np.asarray(student(x)), mean, atol=1e-5)
    path = export.export_tflite(student, tmp_path / "ensemble.tflite")
    runner = export.TFLiteRunner(path)
    np.testing.assert_allclose(runner(x), mean, atol=1e-4)
    single = tmp_path / "branch2.keras"
    branches[1].save(single)
    np.testing.assert_allclose(np.asarray(keras.models.load_model(single)(x)), np.asarray(branches[1](x)), atol=1e-6)


def test_independent_branches_and_save_load_round_trip(tmp_path):
    student = models.multibranch("resnet8", 2, SHAPE, 10, shared_stem=False)
    assert "shared_stem" not in [layer.name for layer in student.layers]
    distiller = EnsembleDistiller(teachers=make_teachers(("cnn", "resnet8")), student=student, temperature=[2.0, 3.0],
                                  beta=0.0)
    distiller.compile(optimizer="sgd")
    x = np.random.default_rng(0).normal(size=(8, *SHAPE)).astype("float32")
    distiller.fit(x, np.arange(8) % 10, epochs=1, verbose=0)
    distiller.save(tmp_path / "ekd.keras")
    loaded = keras.models.load_model(tmp_path / "ekd.keras")
    assert isinstance(loaded, EnsembleDistiller) and loaded.temperatures == [2.0, 3.0]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(distiller(x)), atol=1e-5)


def test_cache_of_other_teachers_and_unpooled_embeddings_are_refused():
    shape = data.info("synthetic").input_shape
    teachers = make_teachers(("resnet8", "cnn"), shape)
    one = EnsembleDistiller(teachers=teachers[:1], student=models.multibranch("resnet8", 1, shape, 10), beta=0.0)
    x = np.zeros((2, *shape), "float32")
    batch = {"image": x, "teacher1_logits": np.zeros((2, 10), "float32"), "teacher2_logits": np.zeros((2, 10), "float32")}
    with pytest.raises(ValueError, match="cached outputs of 2 teacher\\(s\\) but"):
        one.compute_terms(batch, np.zeros(2, "int32"), one(x, features=True), training=False)
    with pytest.raises(ValueError, match=r"'stage3' \(4, 4, 128\).*'branch1_embedding' \(64,\).*pooled"):
        EnsembleDistiller(teachers=make_teachers(("cnn",)), student=models.multibranch("resnet8", 1, SHAPE, 10),
                          embedding_layer="stage3")
