"""Raw arrays of the supported datasets, found offline first.

Each loader returns `(images uint8 (N, H, W, C), labels int32 (N,))` for the
`"train"` or `"test"` split.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not on this machine and could not be downloaded."""


def keras_cache_dir() -> Path:
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(keras_home) / "datasets" / "fashion-mnist"


def fashion_mnist_search_path(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched, in order, for the four Fashion-MNIST idx files."""
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    elif os.environ.get("KERAS_KD_DATA_DIR"):
        candidates.append(Path(os.environ["KERAS_KD_DATA_DIR"]))
    candidates += [DEBIAN_FASHION_MNIST, keras_cache_dir()]
    return candidates


def _has_files(directory: Path) -> bool:
    return all((directory / name).is_file() for pair in FASHION_MNIST_FILES.values() for name in pair)


def read_idx(path: Path) -> np.ndarray:
    """Reads an (optionally gzipped) idx file into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"Cannot read idx file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number).")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says {expected} values, found {data.size}."
        )
    return data.reshape(dims)


def load_fashion_mnist(split: str, data_dir=None, download: bool = True):
    """Fashion-MNIST from local idx files, downloading only when none exist."""
    searched = fashion_mnist_search_path(data_dir)
    directory = next((d for d in searched if _has_files(d)), None)
    if directory is None and download and data_dir is None:
        directory = _download_fashion_mnist(searched)
    if directory is None:
        raise DatasetNotFoundError(
            "Fashion-MNIST not found. Looked for "
            f"{', '.join(FASHION_MNIST_FILES['train'] + FASHION_MNIST_FILES['test'])} in: "
            + "; ".join(str(d) for d in searched)
            + ". Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "or set KERAS_KD_DATA_DIR to a directory holding the four files."
        )
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(directory / image_file)[..., None]
    labels = read_idx(directory / label_file).astype(np.int32)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split} in {directory}: {len(images)} images but {len(labels)} labels.")
    return images, labels


def _download_fashion_mnist(searched: list[Path]) -> Path | None:
    """Downloads into the Keras cache with keras' own loader; None when offline."""
    import keras

    try:
        keras.datasets.fashion_mnist.load_data()
    except Exception:  # noqa: BLE001 - any network failure means "not available"
        return None
    return keras_cache_dir() if _has_files(keras_cache_dir()) else None


def load_tfds(name: str, split: str, data_dir=None):
    """CIFAR-10/100 (or any image tfds dataset) as numpy arrays via tensorflow-datasets."""
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)
        batches = list(tfds.as_numpy(dataset.batch(4096)))
    except Exception as error:  # tfds raises many types when offline
        raise DatasetNotFoundError(
            f"Could not load {name!r} ({split}) with tensorflow-datasets: {error}. "
            "It needs internet access the first time, or a prepared copy in data_dir "
            "(TFDS_DATA_DIR)."
        ) from error
    if not batches:
        raise DatasetNotFoundError(f"tensorflow-datasets returned no examples for {name!r} ({split}).")
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return images, labels
