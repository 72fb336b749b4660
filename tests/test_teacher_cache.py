"""Seeded augmentation and the teacher-output cache: views reproducible per
(seed, epoch, example), cached steps equal online steps, refusals."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_kd import Distiller, EnsembleDistiller, data, losses, models
from keras_kd.data import Augmentation, CacheError, TeacherOutputCache

SHAPE = data.info("synthetic").input_shape
SUBSET = dict(subset_fraction=0.05)  # 50 images


def standardize(batch):
    return data.standardize(batch, "synthetic")


def reference_view(image: np.ndarray, offset, flip: bool, pad: int) -> np.ndarray:
    """Pad-and-crop plus flip written with numpy: a window of the zero-padded image."""
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    view = padded[offset[0] : offset[0] + h, offset[1] : offset[1] + w]
    return view[:, ::-1] if flip else view


def test_views_follow_seed_epoch_and_index_only():
    images, _ = data.load_arrays("synthetic", "train", **SUBSET)
    augmentation = Augmentation(pad=2, flip=True, seed=11)
    stream = data.load("synthetic", "train", 8, augment=augmentation, epochs=3, with_index=True, seed=5, **SUBSET)
    other_order = data.load("synthetic", "train", 5, augment=augmentation, epochs=3, with_index=True, seed=6,
                            **SUBSET)
    per_epoch = data.batches_per_epoch(stream, 3)
    assert per_epoch == 7 and int(stream.cardinality()) == 21
    views, seen = {}, []
    for step, (x, _) in enumerate(stream.as_numpy_iterator()):
        for image, index in zip(x["image"], x["index"], strict=True):
            views[(step // per_epoch, int(index))] = image
            seen.append(int(index))
    assert sorted(seen[:50]) == list(range(50))  # each epoch shows every example once
    mean, std = data.pipeline.normalization("synthetic")
    for epoch, index in [(0, 0), (1, 7), (2, 49)]:
        params = augmentation.params(epoch, index)
        expected = reference_view(images[index], params["offset"].numpy(), bool(params["flip"]), 2)
        np.testing.assert_allclose(views[(epoch, index)], (expected / 255.0 - mean) / std, atol=1e-6)
    # Another batch size and shuffling seed: the same views, in another order.
    per_epoch = data.batches_per_epoch(other_order, 3)
    for step, (x, _) in enumerate(other_order.as_numpy_iterator()):
        for image, index in zip(x["image"], x["index"], strict=True):
            np.testing.assert_array_equal(image, views[(step // per_epoch, int(index))])
    assert not np.array_equal(views[(0, 3)], views[(1, 3)]) or not np.array_equal(views[(1, 3)], views[(2, 3)])
    # A resumed pipeline starts at its epoch with the same batches.
    full = list(data.load("synthetic", "train", 8, augment=augmentation, epochs=3, seed=5, **SUBSET))
    resumed = list(data.load("synthetic", "train", 8, augment=augmentation, epochs=3, initial_epoch=2, seed=5,
                             **SUBSET))
    assert len(resumed) == 7
    for (a, _), (b, _) in zip(full[14:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_crop_offsets_and_flips_are_uniform():
    augmentation = Augmentation(pad=2, flip=True, seed=0)
    params = [augmentation.params(0, i) for i in range(2000)]
    offsets = np.array([p["offset"].numpy() for p in params])
    flips = np.array([bool(p["flip"]) for p in params])
    assert offsets.min() == 0 and offsets.max() == 4
    np.testing.assert_allclose(np.bincount(offsets[:, 0], minlength=5) / 2000, 0.2, atol=0.04)
    assert 0.45 < flips.mean() < 0.55
    assert not Augmentation(pad=0, flip=False).params(0, 0)["flip"]
    with pytest.raises(ValueError, match="`pad` must be an integer >= 0"):
        Augmentation(pad=-1)


def _kd_lp_distiller():
    teacher = models.get("resnet8", SHAPE, 10)
    student = models.get("cnn", SHAPE, 10)
    return Distiller(
        teacher=teacher, student=student,
        distillation_losses=[losses.SoftTargetLoss(temperature=4.0),
                             losses.get("lp", k=3, normalize=False, teacher_layer_name="embedding",
                                        student_layer_name="embedding")],
        distillation_loss_weights=[0.9, 1.0], student_loss_weight=0.1,
    )


def _gradients(distiller, x, y):
    with tf.GradientTape() as tape:
        outputs = distiller(x, training=True, features=True)
        terms = distiller.compute_terms(x, y, outputs, training=True)
        total = sum(term.weight * term.value for term in terms)
    return float(total), tape.gradient(total, distiller.student.trainable_variables)


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("float32", 1e-5)])
def test_cached_step_equals_online_step(tmp_path, dtype, tolerance):
    keras.utils.set_random_seed(0)
    distiller = _kd_lp_distiller()
    images, labels = data.load_arrays("synthetic", "train", **SUBSET)
    augmentation = Augmentation(pad=2, seed=3)
    cache = distiller.build_teacher_cache(images, labels, tmp_path / "cache", preprocess=standardize,
                                          augmentation=augmentation, epochs=2, dtype=dtype, verbose=0)
    assert sorted(cache.columns) == ["teacher1_embedding", "teacher1_logits"]
    online = data.load("synthetic", "train", 16, augment=augmentation, epochs=2, seed=1, **SUBSET)
    cached = data.load("synthetic", "train", 16, augment=augmentation, epochs=2, seed=1, teacher_cache=cache,
                       **SUBSET)
    for step, ((x, y), (xc, yc)) in enumerate(zip(online, cached, strict=True)):
        if step not in (0, 5):  # one batch of each epoch
            continue
        np.testing.assert_array_equal(x, xc["image"])
        np.testing.assert_array_equal(y, yc)
        teacher = distiller.teacher_pass(x)[0]
        np.testing.assert_allclose(xc["teacher1_logits"], teacher["logits"], rtol=tolerance, atol=tolerance)
        loss, grads = _gradients(distiller, x, y)
        loss_c, grads_c = _gradients(distiller, xc, yc)
        assert loss_c == pytest.approx(loss, rel=tolerance, abs=tolerance)
        for g, gc in zip(grads, grads_c, strict=True):
            scale = float(tf.reduce_max(tf.abs(g))) + 1e-6
            assert float(tf.reduce_max(tf.abs(g - gc))) <= 5 * tolerance * scale


def test_fit_on_cache_never_runs_the_teachers(tmp_path):
    shape = SHAPE
    teachers = [models.get("resnet8", shape, 10), models.get("cnn", shape, 10)]
    distiller = EnsembleDistiller(teachers=teachers, student=models.multibranch("resnet8", 2, shape, 10))
    images, labels = data.load_arrays("synthetic", "train", **SUBSET)
    augmentation = Augmentation(pad=2, seed=0)
    cache = distiller.build_teacher_cache(images, labels, tmp_path / "cache", preprocess=standardize,
                                          augmentation=augmentation, epochs=2, verbose=0)
    assert sorted(cache.columns) == ["teacher1_embedding", "teacher1_logits", "teacher2_embedding", "teacher2_logits"]
    distiller.check_teacher_cache(TeacherOutputCache.load(tmp_path / "cache"))
    ds = data.load("synthetic", "train", 10, augment=augmentation, epochs=2, teacher_cache=cache, **SUBSET)

    class Boom(keras.layers.Layer):
        def call(self, inputs):
            raise AssertionError("a teacher ran")

    for view in distiller.teacher_views:  # any teacher call would now fail
        view.call = Boom().call
    distiller.compile(optimizer="sgd")
    history = distiller.fit(ds, epochs=2, steps_per_epoch=data.batches_per_epoch(ds, 2), verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()


def test_cache_is_extended_reused_and_refused_when_it_does_not_match(tmp_path):
    teacher = models.get("cnn", SHAPE, 10)
    images, labels = data.load_arrays("synthetic", "train", **SUBSET)
    augmentation = Augmentation(pad=2, seed=0)
    folder = tmp_path / "cache"
    build = dict(preprocess=standardize, augmentation=augmentation, verbose=0)
    cache = TeacherOutputCache.build([teacher], images, labels, folder, epochs=2, **build)
    first = (folder / "epoch_0000" / "teacher1_logits.bin").stat().st_mtime_ns
    with pytest.raises(CacheError, match="holds 2 epoch\\(s\\) of augmented views but the run needs 3"):
        data.load("synthetic", "train", 10, augment=augmentation, epochs=3, teacher_cache=cache, **SUBSET)
    cache = TeacherOutputCache.build([teacher], images, labels, folder, epochs=3, **build)
    assert cache.epochs == 3 and (folder / "epoch_0000" / "teacher1_logits.bin").stat().st_mtime_ns == first
    data.load("synthetic", "train", 10, augment=augmentation, epochs=3, teacher_cache=cache, **SUBSET)
    with pytest.raises(CacheError, match="augmentation"):
        data.load("synthetic", "train", 10, augment=Augmentation(pad=2, seed=1), epochs=3, teacher_cache=cache,
                  **SUBSET)
    with pytest.raises(CacheError, match="rows but the training set has"):
        data.load("synthetic", "train", 10, augment=augmentation, epochs=3, teacher_cache=cache, subset_fraction=0.1)
    with pytest.raises(CacheError, match="different training images"):
        data.load("synthetic", "train", 10, augment=augmentation, epochs=3, teacher_cache=cache, subset_seed=3,
                  **SUBSET)
    with pytest.raises(ValueError, match="pass `epochs=`"):
        data.load("synthetic", "train", 10, augment=augmentation, teacher_cache=cache, **SUBSET)
    other = models.get("cnn", SHAPE, 10)
    with pytest.raises(CacheError, match="holds outputs of teachers"):
        cache.check_teachers([other])
    with pytest.raises(CacheError, match="built for other teachers"):
        TeacherOutputCache.build([other], images, labels, folder, epochs=3, **build)
    with pytest.raises(CacheError, match="would take .* GB"):
        TeacherOutputCache.build([teacher], images, labels, tmp_path / "big", epochs=3, max_bytes=100, **build)
    os.truncate(folder / "epoch_0001" / "teacher1_logits.bin", 10)
    with pytest.raises(CacheError, match="epoch_0001.*truncated"):
        TeacherOutputCache.load(folder)
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="corrupt"):
        TeacherOutputCache.load(folder)


def test_unaugmented_cache_serves_every_epoch(tmp_path):
    teacher = models.get("cnn", SHAPE, 10)
    images, labels = data.load_arrays("synthetic", "train", **SUBSET)
    cache = TeacherOutputCache.build([teacher], images, labels, tmp_path, preprocess=standardize, epochs=5, verbose=0)
    assert cache.epochs == 1 and cache.augmentation is None
    ds = data.load("synthetic", "train", 50, augment=False, epochs=3, teacher_cache=cache, with_index=True, **SUBSET)
    expected = np.asarray(teacher(standardize(images), training=False))
    for x, _ in ds:
        np.testing.assert_allclose(x["teacher1_logits"], expected[x["index"].numpy()], rtol=2e-3, atol=2e-3)


def test_top_k_keeps_the_top_probabilities_and_spreads_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    inputs = keras.Input((4,))
    teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    images = rng.integers(0, 255, size=(6, 4), dtype=np.uint8)
    labels = np.arange(6) % 10
    cache = TeacherOutputCache.build([teacher], images, labels, tmp_path, preprocess=lambda b: b / 255.0, top_k=3,
                                     dtype="float32", verbose=0)
    logits = np.asarray(teacher(images / 255.0))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    columns = cache.epoch_columns(0)
    for i in range(6):
        restored = np.asarray(cache.rows(columns, i)["teacher1_logits"])
        restored_probs = np.exp(restored) / np.exp(restored).sum()
        top = np.argsort(-probs[i])[:3]
        np.testing.assert_allclose(restored_probs[top], probs[i][top], rtol=1e-5)
        rest = np.setdiff1d(np.arange(10), top)
        np.testing.assert_allclose(restored_probs[rest], probs[i][rest].sum() / 7, rtol=1e-4)


def test_cli_cache_is_built_once_and_shared(tmp_path, capsys):
    from trainers import cli

    teacher_dir = tmp_path / "teacher"
    common = ["--set", "data.name=synthetic", "--set", "data.subset_fraction=0.05", "--set", "train.epochs=1",
              "--set", "data.batch_size=16", "--set", "train.verbose=0"]
    assert cli.main(["train-teacher", "--output-dir", str(tmp_path), "--run-name", "teacher",
                     "--set", "teacher.arch=cnn", *common]) == 0
    capsys.readouterr()
    cached = ["distill", "--output-dir", str(tmp_path), "--set", f"teacher.path={teacher_dir}",
              "--set", "student.arch=cnn", "--set", "cache.teacher_outputs=cached",
              "--set", f"cache.dir={tmp_path / 'caches'}", *common]
    results = []
    for name in ("kd1", "kd2"):
        assert cli.main([*cached, "--run-name", name]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["teacher_cache"] == results[1]["teacher_cache"]
    assert len(list((tmp_path / "caches").iterdir())) == 1
    manifest = json.loads((tmp_path / "caches" / os.listdir(tmp_path / "caches")[0] / "manifest.json").read_text())
    assert manifest["epochs"] == 1 and manifest["augmentation"]["pad"] == 2
    log = (tmp_path / "kd2" / "train.log").read_text()
    assert "teacher cache:" in log
    # `auto` falls back to online teachers when the cache would be too large; `cached` refuses.
    assert cli.main([*cached[:-4], "--set", "cache.teacher_outputs=auto", "--set", "cache.max_gigabytes=1e-9",
                     "--run-name", "kd3", *common]) == 0
    assert json.loads(capsys.readouterr().out)["teacher_cache"] is None
    assert "not used, teachers run online" in (tmp_path / "kd3" / "train.log").read_text()
    assert cli.main(["train-teacher", "--output-dir", str(tmp_path), "--run-name", "ce",
                     "--set", "teacher.arch=cnn", "--set", "cache.teacher_outputs=cached", *common]) == 2
    assert "has no frozen teacher" in capsys.readouterr().err


def test_float16_bits_convert_exactly_for_every_pattern():
    from keras_kd.data.cache import half_bits_to_float32

    bits = np.arange(2**16, dtype=np.uint16)
    expected = bits.view(np.float16).astype(np.float32)
    got = half_bits_to_float32(tf.constant(bits)).numpy()
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(got[finite], expected[finite])
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(expected[finite]))  # -0.0 stays -0.0
    np.testing.assert_array_equal(got[np.isinf(expected)], expected[np.isinf(expected)])
    assert np.isnan(got[np.isnan(expected)]).all()


@pytest.mark.parametrize("dtype, top_k", [("float16", None), ("float32", 3)])
def test_epoch_outputs_are_what_training_reads(tmp_path, dtype, top_k):
    rng = np.random.default_rng(1)
    inputs = keras.Input((4,))
    teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    images = rng.integers(0, 255, size=(7, 4), dtype=np.uint8)
    cache = TeacherOutputCache.build([teacher], images, np.arange(7) % 10, tmp_path, preprocess=lambda b: b / 255.0,
                                     top_k=top_k, dtype=dtype, verbose=0)
    outputs = cache.epoch_outputs(0)["teacher1_logits"]
    columns = cache.epoch_columns(0)
    assert outputs.shape == (7, 10) and outputs.dtype == np.float32
    for i in range(7):
        np.testing.assert_array_equal(outputs[i], cache.rows(columns, i)["teacher1_logits"])
    logits = np.asarray(teacher(images / 255.0))
    if top_k is None:  # float16 storage of the teacher's own logits
        np.testing.assert_allclose(outputs, logits, rtol=2e-3, atol=2e-3)
    else:  # the teacher's own top-3 probabilities (independent of `rows`)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        top = np.argsort(-probs, axis=1)[:, :3]
        np.testing.assert_allclose(np.take_along_axis(np.exp(outputs), top, 1), np.take_along_axis(probs, top, 1),
                                   rtol=1e-5)
    # Unaugmented: its one stored epoch serves every epoch, as in training.
    np.testing.assert_array_equal(cache.epoch_outputs(5)["teacher1_logits"], outputs)


def test_epoch_outputs_refuses_an_epoch_an_augmented_cache_lacks(tmp_path):
    teacher = models.get("cnn", SHAPE, 10)
    images, labels = data.load_arrays("synthetic", "train", subset_fraction=0.01)
    cache = TeacherOutputCache.build([teacher], images, labels, tmp_path, preprocess=standardize,
                                     augmentation=Augmentation(pad=2, seed=0), epochs=2, verbose=0)
    assert not np.array_equal(cache.epoch_outputs(0)["teacher1_logits"], cache.epoch_outputs(1)["teacher1_logits"])
    with pytest.raises(CacheError, match=r"holds epochs 0\.\.1; epoch 2 was asked for"):
        cache.epoch_outputs(2)
