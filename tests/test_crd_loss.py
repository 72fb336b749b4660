"""CRD (Tian et al., ICLR 2020) against a numpy reference written from the paper
and the authors' NCE formulation: scores, normalisation, loss, memory update."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller, data, losses
from keras_kd.distillers.base import NonFiniteLossError

from conftest import tiny_model


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_nce(scores, num_negatives, num_samples, mask):
    """The authors' NCE written from the paper: column 0 of `scores` is the
    positive P, the others the negatives; D1 = P / (P + K Pn), D0 = K Pn / (P + K Pn)."""
    k_pn = num_negatives / num_samples
    log_d1 = np.log(scores[:, 0] / (scores[:, 0] + k_pn))
    log_d0 = np.log(k_pn / (scores[:, 1:] + k_pn))
    return -(log_d1.sum() + (log_d0 * mask).sum()) / len(scores)


def embeddings(part, teacher, student):
    pair = part.embedding
    v_t = unit(teacher @ np.asarray(pair.teacher_embed.kernel) + np.asarray(pair.teacher_embed.bias))
    v_s = unit(student @ np.asarray(pair.student_embed.kernel) + np.asarray(pair.student_embed.bias))
    return v_t, v_s


def crd_step(loss, part, teacher, student, index, labels, negatives):
    """One training call with fixed negatives, and the numpy value it should give."""
    n, t = loss.num_samples, loss.temperature
    part.sample = lambda: negatives.astype("int32")
    memory_t, memory_s = np.asarray(part.teacher_memory).copy(), np.asarray(part.student_memory).copy()
    memory_labels = np.asarray(part.memory_labels).copy()
    mask = (labels[:, None] != memory_labels[negatives][None, :]).astype(float)
    v_t, v_s = embeddings(part, teacher, student)
    rows = np.concatenate([index[:, None], np.broadcast_to(negatives, (len(index), len(negatives)))], axis=1)
    student_anchor = np.exp(np.einsum("bkd,bd->bk", memory_t[rows], v_s) / t)
    teacher_anchor = np.exp(np.einsum("bkd,bd->bk", memory_s[rows], v_t) / t)
    z_s, z_t = float(part.z_student), float(part.z_teacher)
    z_s = student_anchor.mean() * n if z_s < 0 else z_s
    z_t = teacher_anchor.mean() * n if z_t < 0 else z_t
    k = len(negatives)
    expected = np_nce(student_anchor / z_s, k, n, mask) + np_nce(teacher_anchor / z_t, k, n, mask)
    value = loss(teacher.astype("float32"), student.astype("float32"), parts=part, training=True,
                 inputs={"index": index}, labels=labels)
    unmasked = np_nce(student_anchor / z_s, k, n, 1.0) + np_nce(teacher_anchor / z_t, k, n, 1.0)
    return float(value), expected, (memory_t, memory_s, v_t, v_s, z_s, unmasked)


def test_crd_matches_numpy_and_updates_the_memory_with_momentum():
    rng = np.random.default_rng(0)
    n, batch = 30, 5
    loss = losses.CRDLoss(num_samples=n, feature_dim=6, num_negatives=7, momentum=0.5)
    part = loss.build_parts((None, 12), (None, 4))
    teacher, student = rng.normal(size=(batch, 12)), rng.normal(size=(batch, 4))
    index, labels = np.array([3, 11, 0, 29, 17]), np.array([0, 1, 2, 0, 1])
    negatives = np.array([5, 3, 12, 3, 28, 0, 21])
    value, expected, (memory_t, memory_s, v_t, v_s, z_s, _) = crd_step(loss, part, teacher, student, index, labels,
                                                                    negatives)
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    # Z is fixed by the first training batch.
    assert float(part.z_student) == pytest.approx(z_s, rel=1e-4)
    updated = np.asarray(part.student_memory)
    np.testing.assert_allclose(updated[index], unit(0.5 * memory_s[index] + 0.5 * v_s), atol=1e-5)
    np.testing.assert_allclose(np.asarray(part.teacher_memory)[index], unit(0.5 * memory_t[index] + 0.5 * v_t),
                               atol=1e-5)
    untouched = np.setdiff1d(np.arange(n), index)
    np.testing.assert_array_equal(updated[untouched], memory_s[untouched])
    assert np.abs(memory_s).max() <= 1 / np.sqrt(6 / 3)
    labelled = np.full(n, -1)
    labelled[index] = labels
    np.testing.assert_array_equal(np.asarray(part.memory_labels), labelled)


def test_crd_drops_negatives_of_the_examples_own_class():
    rng = np.random.default_rng(3)
    n = 30
    loss = losses.CRDLoss(num_samples=n, feature_dim=6, num_negatives=9)
    part = loss.build_parts((None, 12), (None, 4))
    part.memory_labels.assign(np.arange(n) % 3)
    teacher, student = rng.normal(size=(4, 12)), rng.normal(size=(4, 4))
    index, labels = np.array([4, 7, 9, 20]), np.array([1, 1, 0, 2])
    negatives = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8])  # classes 0, 1, 2, 0, 1, 2, ...: a third of each row masked
    everything = losses.CRDLoss.from_config({**loss.get_config(), "exclude_same_class": False})
    assert not everything.exclude_same_class
    part.sample = lambda: negatives.astype("int32")
    unmasked = float(everything(teacher.astype("float32"), student.astype("float32"), parts=part, training=False,
                                inputs={"index": index}, labels=labels))  # no memory update, Z not fixed
    value, expected, (*_, expected_unmasked) = crd_step(loss, part, teacher, student, index, labels, negatives)
    np.testing.assert_allclose(value, expected, rtol=1e-4)
    np.testing.assert_allclose(unmasked, expected_unmasked, rtol=1e-4)
    assert unmasked > value + 0.1  # nine negative terms per example instead of six


def test_crd_needs_indices_in_training_and_reports_zero_on_held_out_data():
    loss = losses.CRDLoss(num_samples=10, num_negatives=4)
    part = loss.build_parts((None, 8), (None, 8))
    x = np.random.default_rng(1).normal(size=(3, 8)).astype("float32")
    with pytest.raises(ValueError, match="'index' entry"):
        loss(x, x, parts=part, training=True)
    assert float(loss(x, x, parts=part, training=False)) == 0.0
    with pytest.raises(ValueError, match="needs `num_samples`"):
        losses.CRDLoss().build_parts((None, 8), (None, 8))
    with pytest.raises(ValueError, match="`num_negatives` must be a positive integer"):
        losses.CRDLoss(num_negatives=0)


def test_crd_trains_from_indexed_batches_and_its_memory_stays_out_of_the_student(tmp_path):
    train = data.load("synthetic", "train", 16, subset_fraction=0.05, with_index=True)
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    distiller = Distiller(teacher=teacher, student=student, student_loss_weight=1.0,
                          distillation_losses=losses.get("crd", num_samples=50, num_negatives=32,
                                                         teacher_layer_name="embedding",
                                                         student_layer_name="embedding"))
    assert distiller.needs_sample_index
    distiller.compile(optimizer=keras.optimizers.SGD(0.05))
    memory = np.asarray(distiller.loss_parts["crd_loss"].student_memory).copy()
    history = distiller.fit(train, epochs=2, verbose=0)
    assert np.isfinite(history.history["crd_loss"]).all()
    changed = np.any(np.asarray(distiller.loss_parts["crd_loss"].student_memory) != memory, axis=1)
    assert changed.all()  # every example's row was visited and updated
    assert not any("memory" in w.path for w in student.weights)
    distiller.save(tmp_path / "crd.keras")
    loaded = keras.models.load_model(tmp_path / "crd.keras")
    np.testing.assert_array_equal(np.asarray(loaded.loss_parts["crd_loss"].student_memory),
                                  np.asarray(distiller.loss_parts["crd_loss"].student_memory))


def test_cli_feeds_indices_and_sizes_the_memory_bank(tmp_path, capsys):
    import csv
    import json

    from trainers import cli

    common = ["--output-dir", str(tmp_path), "--set", "data.name=synthetic", "--set", "data.subset_fraction=0.05",
              "--set", "train.epochs=1", "--set", "data.batch_size=16", "--set", "train.verbose=0"]
    assert cli.main(["train-teacher", "--run-name", "teacher", "--set", "teacher.arch=cnn", *common]) == 0
    crd = ("method.losses=[{name: crd, weight: 0.8, num_negatives: 64, teacher_layer_name: embedding, "
           "student_layer_name: embedding}]")
    assert cli.main(["distill", "--run-name", "crd", "--set", f"teacher.path={tmp_path / 'teacher'}",
                     "--set", "student.arch=cnn", "--set", crd, "--set", "cache.teacher_outputs=auto",
                     "--set", f"cache.dir={tmp_path / 'caches'}", *common]) == 0
    capsys.readouterr()
    history = list(csv.DictReader((tmp_path / "crd" / "history.csv").open()))
    assert float(history[0]["crd_loss"]) > 0
    distiller = keras.models.load_model(tmp_path / "crd" / "distiller.keras")
    assert distiller.loss_parts["crd_loss"].num_samples == 50  # 5% of the 1,000 synthetic images
    assert json.loads((tmp_path / "crd" / "results.json").read_text())["teacher_cache"]  # cached and indexed


@pytest.mark.parametrize("jit_compile", [True, False], ids=["xla", "no_xla"])
def test_a_refused_step_leaves_the_memory_banks_untouched(jit_compile):
    # The banks are written after the step is decided (not restored from a copy of the whole bank).
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, 16)
    teacher, student = tiny_model(width=8, name="teacher"), tiny_model(width=4, name="student")
    distiller = Distiller(teacher=teacher, student=student, student_loss_weight=1.0,
                          distillation_losses=losses.get("crd", num_samples=40, num_negatives=16,
                                                         teacher_layer_name="embedding",
                                                         student_layer_name="embedding"))
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=jit_compile)
    part = distiller.loss_parts["crd_loss"]
    assert part.defer_updates and not {id(v) for v in part.deferred_weights} & {id(v) for v in distiller.forward_state()}
    index = np.arange(16) * 2
    banks = ("student_memory", "teacher_memory", "memory_labels")
    before = {name: np.asarray(getattr(part, name)).copy() for name in banks}
    nan = x.copy()
    nan[3] = np.nan
    with pytest.raises(NonFiniteLossError):
        distiller.fit({"image": nan, "index": index}, y, batch_size=16, epochs=1, verbose=0)
    for name in banks:
        np.testing.assert_array_equal(np.asarray(getattr(part, name)), before[name], err_msg=name)
    distiller.fit({"image": x, "index": index}, y, batch_size=16, epochs=1, verbose=0)
    changed = np.any(np.asarray(part.student_memory) != before["student_memory"], axis=1)
    np.testing.assert_array_equal(np.flatnonzero(changed), index)
    np.testing.assert_array_equal(np.asarray(part.memory_labels)[index], y)


def test_the_first_batch_sets_z_as_a_constant():
    # The authors detach Z: the first step's gradient is the one a preset Z of the same value gives.
    import tensorflow as tf

    rng = np.random.default_rng(5)
    loss = losses.CRDLoss(num_samples=30, feature_dim=6, num_negatives=7)
    teacher = tf.constant(rng.normal(size=(5, 12)), "float32")
    student = tf.constant(rng.normal(size=(5, 4)), "float32")
    index, labels = np.array([3, 11, 0, 29, 17]), np.array([0, 1, 2, 0, 1])
    negatives = np.array([5, 3, 12, 3, 28, 0, 21], "int32")
    results, z = [], None
    for preset in (False, True):
        keras.utils.set_random_seed(1)
        part = loss.build_parts((None, 12), (None, 4))
        part.sample = lambda: negatives
        if preset:
            part.z_student.assign(z[0])
            part.z_teacher.assign(z[1])
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = loss(teacher, student, parts=part, training=True, inputs={"index": index}, labels=labels)
        results.append((float(value), tape.gradient(value, student).numpy()))
        z = float(part.z_student), float(part.z_teacher)
    assert z[0] > 0 and z[1] > 0
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-4, atol=1e-7)
