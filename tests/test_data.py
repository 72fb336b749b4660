import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf

from keras_kd import data
from keras_kd.data import sources

DEBIAN = sources.DEBIAN_FASHION_MNIST


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(directory, n_train=40, n_test=20, fill=0):
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = sources.FASHION_MNIST_FILES[split]
        write_idx(directory / images_name, np.full((n, 28, 28), fill))
        write_idx(directory / labels_name, np.arange(n) % 10)
    return directory


def test_read_idx_round_trip_and_truncation(tmp_path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a.gz"), array)
    raw = gzip.open(tmp_path / "a.gz").read()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(raw[:-5])
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="Cannot read idx file"):
        data.read_idx(tmp_path / "c.gz")


def test_search_order_argument_then_env(tmp_path, monkeypatch):
    arg_dir = fake_fashion_mnist(tmp_path / "arg", fill=1)
    env_dir = fake_fashion_mnist(tmp_path / "env", fill=2)
    monkeypatch.setenv("KERAS_KD_DATA_DIR", str(env_dir))
    images, _ = sources.load_fashion_mnist("train", data_dir=arg_dir)
    assert images.max() == 1 and images.shape == (40, 28, 28, 1)
    images, _ = sources.load_fashion_mnist("train")
    assert images.max() == 2
    search = data.fashion_mnist_search_path()
    assert search[0] == env_dir and search[1] == DEBIAN and search[2].parts[-2:] == ("datasets", "fashion-mnist")


def test_missing_data_error_lists_locations(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_KD_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    with pytest.raises(data.DatasetNotFoundError) as info:
        sources.load_fashion_mnist("train", data_dir=tmp_path / "empty")
    message = str(info.value)
    for place in ("empty", "debian", "keras_home/datasets/fashion-mnist"):
        assert str(tmp_path / place) in message
    with pytest.raises(data.DatasetNotFoundError):
        sources.load_fashion_mnist("train", download=False)
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").exists(), reason="apt package missing")
def test_real_fashion_mnist_from_debian(monkeypatch):
    monkeypatch.delenv("KERAS_KD_DATA_DIR", raising=False)
    x, y = data.load_arrays("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(data.class_counts(y, 10), np.full(10, 1000))
    x, y = data.load_arrays("fashion_mnist", "train", subset_fraction=0.1)
    assert x.shape[0] == 6000
    np.testing.assert_array_equal(data.class_counts(y, 10), np.full(10, 600))


def test_subset_is_class_balanced_and_seeded():
    x, y = data.load_arrays("synthetic", "train", subset_fraction=0.2, subset_seed=3)
    np.testing.assert_array_equal(data.class_counts(y, 10), np.full(10, 20))
    x2, y2 = data.load_arrays("synthetic", "train", subset_fraction=0.2, subset_seed=3)
    np.testing.assert_array_equal(x, x2)
    x3, _ = data.load_arrays("synthetic", "train", subset_fraction=0.2, subset_seed=4)
    assert not np.array_equal(x, x3)


def test_validation_is_disjoint_and_balanced():
    full_x, _ = data.load_arrays("synthetic", "train")
    val_x, val_y = data.load_arrays("synthetic", "validation", validation_fraction=0.1)
    tr_x, _ = data.load_arrays("synthetic", "train", validation_fraction=0.1)
    np.testing.assert_array_equal(data.class_counts(val_y, 10), np.full(10, 10))
    assert len(val_x) + len(tr_x) == len(full_x)
    val_rows = {row.tobytes() for row in val_x}
    assert not any(row.tobytes() in val_rows for row in tr_x)


def test_pipeline_normalization_batches_and_seeded_augmentation():
    plain = data.load("synthetic", "test", batch_size=50, normalize=False)
    images, labels = next(iter(plain))
    raw_x, raw_y = data.load_arrays("synthetic", "test")
    np.testing.assert_allclose(images.numpy(), raw_x[:50] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), raw_y[:50])
    normalized = next(iter(data.load("synthetic", "test", batch_size=50)))[0].numpy()
    np.testing.assert_allclose(normalized, (raw_x[:50] / 255.0 - 0.5) / 0.25, atol=1e-5)
    a = next(iter(data.load("synthetic", "train", 64, seed=5)))[0].numpy()
    b = next(iter(data.load("synthetic", "train", 64, seed=5)))[0].numpy()
    c = next(iter(data.load("synthetic", "train", 64, seed=6)))[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown dataset 'mnist3'"):
        data.load("mnist3")
    with pytest.raises(ValueError, match="Unknown split"):
        data.load("synthetic", "dev")
    with pytest.raises(ValueError, match="subset_fraction"):
        data.load("synthetic", subset_fraction=1.5)
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        data.load("synthetic", "validation")
    with pytest.raises(ValueError, match="batch_size"):
        data.load("synthetic", batch_size=0)


def test_cifar_loading_through_tfds_mock():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=30):
        x, y = data.load_arrays("cifar10", "train")
        assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8
        images, labels = next(iter(data.load("cifar100", "test", batch_size=8)))
        assert images.shape == (8, 32, 32, 3) and labels.dtype == tf.int32
