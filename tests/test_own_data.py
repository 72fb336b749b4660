"""Bring your own data: image folders, .npz arrays, any tfds dataset, resizing."""

import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from keras_kd import data
from trainers.config import ConfigError, load_config

CLASSES = ("ant", "bee", "cat")


def write_folder(root, per_class=6, size=(20, 18), mode="RGB", classes=CLASSES, seed=0):
    """PNG files whose mean brightness encodes their class (a learnable task)."""
    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (*size, channels)) + 80 * k
            Image.fromarray(pixels.astype(np.uint8).squeeze(), mode).save(root / name / f"{i}.png")
    return root


def test_folder_reads_classes_resizes_and_carves_a_balanced_test_split(tmp_path, caplog):
    root = write_folder(tmp_path / "images")
    (root / "bee" / "readme.txt").write_text("not an image")
    source = data.DataSource("folder", path=str(root), image_size=(8, 8), test_fraction=1 / 3)
    with caplog.at_level(logging.WARNING, logger="keras_kd"):
        meta = data.info(source)
    assert "skipped 1 file(s) that are not images (.txt)" in caplog.text
    assert meta.class_names == CLASSES and meta.num_classes == 3 and meta.input_shape == (8, 8, 3)
    train_x, train_y = data.load_arrays(source, "train")
    test_x, test_y = data.load_arrays(source, "test")
    np.testing.assert_array_equal(np.bincount(train_y), [4, 4, 4])
    np.testing.assert_array_equal(np.bincount(test_y), [2, 2, 2])
    # Class k's pixels are 80k + U[0, 40): resizing keeps each image's mean in its class band.
    for images, labels in ((train_x, train_y), (test_x, test_y)):
        means = images.reshape(len(images), -1).mean(1)
        assert np.all((means > 80 * labels) & (means < 80 * labels + 40))
    # The same seed gives the same split; pixel statistics are measured on the training images.
    again = data.DataSource("folder", path=str(root), image_size=(8, 8), test_fraction=1 / 3)
    np.testing.assert_array_equal(data.load_arrays(again, "test")[1], test_y)
    np.testing.assert_allclose(meta.mean, train_x.reshape(-1, 3).mean(0) / 255, atol=1e-5)
    batch, labels = next(iter(data.load(source, "train", 4, seed=1)))
    assert batch.shape == (4, 8, 8, 3) and labels.dtype.name == "int32"


def test_folder_with_its_own_test_folder_must_have_the_same_classes(tmp_path):
    root = write_folder(tmp_path / "train")
    test = write_folder(tmp_path / "test", per_class=2, seed=1)
    source = data.DataSource("folder", path=str(root), test_path=str(test), image_size=(8, 8))
    assert len(data.load_arrays(source, "test")[1]) == 6
    other = write_folder(tmp_path / "other", per_class=2, classes=("ant", "bee", "dog"))
    bad = data.DataSource("folder", path=str(root), test_path=str(other), image_size=(8, 8))
    with pytest.raises(ValueError, match=r"has classes \['ant', 'bee', 'dog'\], but the training folder has"):
        data.load_arrays(bad, "test")


def test_folder_errors_name_the_problem(tmp_path):
    empty = write_folder(tmp_path / "empty")
    (empty / "dog").mkdir()
    with pytest.raises(ValueError, match="class folder\\(s\\) 'dog' hold no images"):
        data.info(data.DataSource("folder", path=str(empty), image_size=(8, 8), test_fraction=0.3))
    broken = write_folder(tmp_path / "broken")
    (broken / "cat" / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"1 image file\(s\) cannot be read: .*cat/bad.png"):
        data.info(data.DataSource("folder", path=str(broken), image_size=(8, 8), test_fraction=0.3))
    mixed = write_folder(tmp_path / "mixed")
    write_folder(mixed, per_class=2, mode="L", classes=("cat",), seed=3)  # overwrites 0.png, 1.png as gray
    with pytest.raises(ValueError, match="mixes channel counts \\(2 with 1 channel\\(s\\), 16 with 3"):
        data.info(data.DataSource("folder", path=str(mixed), image_size=(8, 8), test_fraction=0.3))
    gray = data.DataSource("folder", path=str(mixed), image_size=(8, 8), test_fraction=0.3, channels=1)
    assert data.info(gray).input_shape == (8, 8, 1)
    with pytest.raises(ValueError, match="needs `image_size`"):
        data.DataSource("folder", path=str(mixed))
    with pytest.raises(ValueError, match="needs `test_path` .* or `test_fraction`"):
        data.load_arrays(data.DataSource("folder", path=str(mixed), image_size=(8, 8), channels=1), "test")
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.info(data.DataSource("folder", path=str(tmp_path / "nowhere"), image_size=(8, 8), test_fraction=0.3))


def test_a_split_missing_a_class_is_an_error(tmp_path):
    root = write_folder(tmp_path / "images", per_class=3)
    for extra in (1, 2):
        (root / "cat" / f"{extra}.png").unlink()  # one cat image left: the test split takes it
    source = data.DataSource("folder", path=str(root), image_size=(8, 8), test_fraction=0.3)
    with pytest.raises(ValueError, match="the train split has no images of class\\(es\\) 'cat'"):
        data.load_arrays(source, "train")


def test_npz_arrays_with_class_names(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "arrays.npz"
    np.savez(path, x_train=rng.integers(0, 255, (30, 9, 9), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 255, (6, 9, 9), dtype=np.uint8), y_test=np.arange(6) % 3,
             class_names=np.array(["x", "y", "z"]))
    source = data.DataSource("npz", path=str(path))
    meta = data.info(source)
    assert meta.input_shape == (9, 9, 1) and meta.class_names == ("x", "y", "z")
    images, _ = data.load_arrays(source, "train")
    np.testing.assert_allclose(meta.std[0], images.std() / 255, rtol=1e-2)
    np.savez(tmp_path / "floats.npz", x_train=np.zeros((2, 4, 4), np.float32), y_train=[0, 1],
             x_test=np.zeros((2, 4, 4), np.float32), y_test=[0, 1])
    with pytest.raises(ValueError, match="x_train must be uint8 images"):
        data.info(data.DataSource("npz", path=str(tmp_path / "floats.npz")))
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="lacks array\\(s\\) y_train, x_test, y_test"):
        data.info(data.DataSource("npz", path=str(tmp_path / "partial.npz")))


def test_any_tfds_dataset_by_name_with_resizing():
    with tfds.testing.mock_data(num_examples=40):
        source = data.DataSource("tfds:mnist", image_size=(14, 14))
        meta = data.info(source)
        images, labels = data.load_arrays(source, "test")
    assert meta.input_shape == (14, 14, 1) and meta.num_classes == 10 and images.shape == (40, 14, 14, 1)
    assert labels.dtype == np.int32


def test_built_in_dataset_resized_keeps_its_statistics():
    source = data.DataSource("synthetic", image_size=(32, 32))
    meta = data.info(source)
    assert meta.input_shape == (32, 32, 1) and meta.mean == data.info("synthetic").mean
    assert data.load_arrays(source, "test")[0].shape == (300, 32, 32, 1)


def test_config_data_sections(tmp_path):
    config = load_config(overrides=["data.name=folder", f"data.path={tmp_path}", "data.image_size=[64, 48]",
                                    "data.test_fraction=0.2", "data.channels=1"])
    source = config.data.source()
    assert source.image_size == (64, 48) and source.channels == 1 and source.test_fraction == 0.2
    with pytest.raises(ConfigError, match="`data`: An image folder needs `image_size`"):
        load_config(overrides=["data.name=folder", f"data.path={tmp_path}"])
    with pytest.raises(ConfigError, match="`data`: `test_path` applies to folder datasets only"):
        load_config(overrides=["data.test_path=/x"])
    with pytest.raises(ConfigError, match="`data`: Unknown dataset 'tfds:'"):
        load_config(overrides=["data.name='tfds:'"])
