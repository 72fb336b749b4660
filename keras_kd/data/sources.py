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


def load_tfds(name: str, split: str, data_dir=None, image_size: tuple[int, int] | None = None):
    """Any image-classification dataset of tensorflow-datasets (CIFAR-10/100
    included) as numpy arrays; `image_size` resizes every image (needed when
    their sizes differ)."""
    import tensorflow_datasets as tfds

    try:
        dataset = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True)
        if image_size is not None:
            dataset = dataset.map(lambda image, label: (resize_uint8(image, image_size), label))
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
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def tfds_class_names(name: str, data_dir=None) -> tuple[str, ...] | None:
    """The label names tensorflow-datasets knows for `name` (None if unknown)."""
    import tensorflow_datasets as tfds

    try:
        names = tfds.builder(name, data_dir=data_dir).info.features["label"].names
    except Exception:  # noqa: BLE001 - names are optional
        return None
    return tuple(names) if names and not all(n.isdigit() for n in names) else None


def resize_uint8(images, image_size: tuple[int, int]):
    """Bilinear (antialiased) resize of uint8 image(s) to `image_size`, as uint8."""
    import tensorflow as tf

    resized = tf.image.resize(images, tuple(image_size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what keras.utils.image_dataset_from_directory reads
CHANNELS_OF_MODE = {"1": 1, "L": 1, "I": 1, "I;16": 1, "F": 1, "LA": 2, "P": 3, "RGB": 3, "YCbCr": 3,
                    "CMYK": 4, "RGBA": 4}


def _log():
    import logging

    return logging.getLogger("keras_kd")


def class_folders(directory: Path) -> tuple[list[str], list[list[Path]], list[Path]]:
    """`(class names, image files per class, skipped files)` of a folder holding
    one sub-folder of images per class (sorted by name, like Keras)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetNotFoundError(f"Image folder {directory} does not exist or is not a folder.")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise ValueError(
            f"Image folder {directory} must hold one sub-folder per class (at least 2); "
            f"found {len(classes)}: {classes}."
        )
    files, skipped = [], []
    for name in classes:
        members = sorted(p for p in (directory / name).rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in members if p.suffix.lower() in IMAGE_EXTENSIONS]
        skipped += [p for p in members if p.suffix.lower() not in IMAGE_EXTENSIONS]
        files.append(images)
    empty = [name for name, images in zip(classes, files, strict=True) if not images]
    if empty:
        raise ValueError(
            f"Image folder {directory}: class folder(s) {', '.join(repr(e) for e in empty)} hold no images "
            f"({', '.join(IMAGE_EXTENSIONS)}). Remove them or add images."
        )
    return classes, files, skipped


def image_channels(paths: list[Path]) -> list[int]:
    """Channel count of each image file (read from its header), or an error
    naming every unreadable file."""
    from PIL import Image, UnidentifiedImageError

    channels, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
                mode = image.mode
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
            bad.append(f"{path} ({error.__class__.__name__}: {error})")
            continue
        channels.append(CHANNELS_OF_MODE.get(mode, 3))
    if bad:
        listed = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{len(bad)} image file(s) cannot be read: {listed}. Remove or replace them.")
    return channels


def read_image_folder(directory, image_size: tuple[int, int], channels: int | None = None,
                      class_names: list[str] | None = None):
    """`(images uint8 (N, H, W, C), labels int32 (N,), class names)` of an image
    folder, decoded and resized by `keras.utils.image_dataset_from_directory`.

    `channels` None: every image must have the same channel count (1 or 3; a
    palette image counts as 3, an alpha channel is dropped), else the error
    says how many of each there are. `class_names` (the training folder's) makes a
    test folder with other classes an error."""
    import keras
    import tensorflow as tf

    directory = Path(directory)
    classes, files, skipped = class_folders(directory)
    if class_names is not None and list(classes) != list(class_names):
        raise ValueError(
            f"Image folder {directory} has classes {classes}, but the training folder has {list(class_names)}."
        )
    if skipped:
        suffixes = sorted({p.suffix or p.name for p in skipped})
        _log().warning("%s: skipped %d file(s) that are not images (%s)", directory, len(skipped), ", ".join(suffixes))
    counts = image_channels([p for group in files for p in group])
    found = sorted(set(counts))
    if channels is None:
        usable = {1 if c <= 2 else 3 for c in found}  # alpha channels are dropped
        if len(usable) > 1:
            tally = ", ".join(f"{counts.count(c)} with {c} channel(s)" for c in found)
            raise ValueError(
                f"Image folder {directory} mixes channel counts ({tally}). Set `channels` "
                "(data.channels: 1 or 3) to convert every image to one."
            )
        channels = usable.pop()
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    dataset = keras.utils.image_dataset_from_directory(
        directory, labels="inferred", label_mode="int", class_names=classes,
        color_mode="grayscale" if channels == 1 else "rgb", batch_size=256,
        image_size=tuple(image_size), shuffle=False, verbose=False,
    )
    images, labels = [], []
    try:
        for batch, label in dataset:
            images.append(np.clip(np.round(batch.numpy()), 0, 255).astype(np.uint8))
            labels.append(label.numpy().astype(np.int32))
    except tf.errors.InvalidArgumentError as error:
        raise ValueError(f"Image folder {directory}: an image cannot be decoded: {error.message}") from None
    images, labels = np.concatenate(images), np.concatenate(labels)
    expected = sum(len(group) for group in files)
    if len(labels) != expected:
        raise ValueError(f"Image folder {directory}: Keras read {len(labels)} images but {expected} image files exist.")
    return images, labels, tuple(classes)


def read_npz(path) -> dict:
    """`x_train, y_train, x_test, y_test` (and optional `class_names`) of an
    `.npz` file in the layout of `keras.datasets`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"Array file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            content = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path} as an .npz file: {error}") from error
    missing = [key for key in ("x_train", "y_train", "x_test", "y_test") if key not in content]
    if missing:
        raise ValueError(f"{path} lacks array(s) {', '.join(missing)}; it has {', '.join(sorted(content))}.")
    for split in ("train", "test"):
        x, y = content[f"x_{split}"], content[f"y_{split}"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(
                f"{path}: x_{split} must be uint8 images (N, H, W) or (N, H, W, C), got {x.dtype} {x.shape}."
            )
        y = np.asarray(y).reshape(-1)
        if not np.issubdtype(y.dtype, np.integer) or len(y) != len(x):
            raise ValueError(f"{path}: y_{split} must hold one integer label per image, got {y.dtype} {y.shape}.")
        content[f"x_{split}"], content[f"y_{split}"] = x, y.astype(np.int32)
    if content["x_train"].shape[1:] != content["x_test"].shape[1:]:
        raise ValueError(f"{path}: train images are {content['x_train'].shape[1:]}, test images {content['x_test'].shape[1:]}.")
    return content
