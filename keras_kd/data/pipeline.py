"""`keras_kd.data.load`: batched `tf.data` pipelines of `(image, label)`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_kd.checks import check_count, check_flag
from keras_kd.data import sources
from keras_kd.data.augment import Augmentation, epoch_order


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset (per-channel statistics on [0, 1] pixels)."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    horizontal_flip: bool = True
    class_names: tuple[str, ...] = ()


DATASETS = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), class_names=sources.FASHION_MNIST_CLASSES
    ),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        class_names=sources.CIFAR10_CLASSES,
    ),
    "cifar100": DatasetInfo(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "synthetic": DatasetInfo(
        "synthetic", (28, 28, 1), 10, (0.5,), (0.25,), class_names=tuple(f"class{i}" for i in range(10))
    ),
}
#: Sources a `DataSource` reads besides the datasets above (`tfds:NAME` is any tfds dataset).
CUSTOM_SOURCES = ("folder", "npz", "tfds:<name>")
SPLITS = ("train", "validation", "test")
SYNTHETIC_SIZES = {"train": 1000, "test": 300}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a dataset's images come from and the shape they are given.

    `name` is a built-in dataset (`fashion_mnist`, `cifar10`, `cifar100`,
    `synthetic`), `folder` (`path`: one sub-folder of images per class, read by
    `keras.utils.image_dataset_from_directory`), `npz` (`path`: `x_train`,
    `y_train`, `x_test`, `y_test` and optionally `class_names`, as
    `keras.datasets` returns them) or `tfds:NAME` (any image-classification
    dataset of tensorflow-datasets, `data_dir` for a prepared copy).

    The test set is the source's own (`test_path` for a folder, the `test`
    split of tfds) or, with `test_fraction`, a class-balanced part of its
    training images chosen by `split_seed`. `image_size` resizes every image
    (required for folders); `channels` converts a folder to grayscale (1) or
    RGB (3); `flip` overrides whether random views may mirror images. Pixel
    statistics of custom sources are measured on their training images.

    Example:

    >>> source = DataSource("synthetic", image_size=(32, 32))
    >>> info(source).input_shape
    (32, 32, 1)
    """

    name: str
    data_dir: str | None = None
    path: str | None = None
    test_path: str | None = None
    test_fraction: float | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    split_seed: int = 0
    flip: bool | None = None

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not (name in DATASETS or name in ("folder", "npz") or (
                name.startswith("tfds:") and len(name) > 5)):
            raise ValueError(
                f"Unknown dataset {name!r}. Available: {', '.join(DATASETS)}, folder (with path), "
                "npz (with path), tfds:NAME (any tensorflow-datasets image dataset)."
            )
        if name in ("folder", "npz") and not self.path:
            raise ValueError(f"Dataset {name!r} needs `path` (the {'image folder' if name == 'folder' else '.npz file'}).")
        if name != "folder" and self.path is not None and name != "npz":
            raise ValueError(f"`path` applies to folder and npz datasets, not {name!r}.")
        if self.test_path is not None and name != "folder":
            raise ValueError("`test_path` applies to folder datasets only.")
        if name == "folder" and self.image_size is None:
            raise ValueError("An image folder needs `image_size` (height, width): its images may differ in size.")
        if self.test_path is not None and self.test_fraction is not None:
            raise ValueError("Give either `test_path` or `test_fraction`, not both.")
        _check_fraction("test_fraction", self.test_fraction, allow_one=False)
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(d, int) and d >= 1 for d in size):
                raise ValueError(f"`image_size` must be (height, width) in pixels, got {self.image_size!r}.")
            object.__setattr__(self, "image_size", size)
        if self.channels is not None and name != "folder":
            raise ValueError("`channels` applies to folder datasets only.")

    @property
    def builtin(self) -> bool:
        return self.name in DATASETS

    @property
    def label(self) -> str:
        """A short name for logs and reports."""
        return f"folder {Path(self.path).name}" if self.name == "folder" else (
            f"npz {Path(self.path).name}" if self.name == "npz" else self.name)


def as_source(dataset: str | DataSource, data_dir=None) -> DataSource:
    """`dataset` as a `DataSource` (a name plus `data_dir`, or itself)."""
    if isinstance(dataset, DataSource):
        if data_dir is not None and str(data_dir) != dataset.data_dir:
            raise ValueError("Pass `data_dir` inside the DataSource, not beside it.")
        return dataset
    return DataSource(dataset, data_dir=None if data_dir is None else str(data_dir))


def info(dataset: str | DataSource) -> DatasetInfo:
    """The `DatasetInfo` of a dataset: shape, classes (with names) and pixel statistics."""
    source = as_source(dataset)
    if source.builtin and source.image_size is None:
        meta = DATASETS[source.name]
        return meta if source.flip is None else dataclasses.replace(meta, horizontal_flip=source.flip)
    return _measured_info(source)


@functools.lru_cache(maxsize=8)
def _measured_info(source: DataSource) -> DatasetInfo:
    images, labels = _source_arrays(source, "train")
    _, test_labels = _source_arrays(source, "test")
    if source.builtin:
        meta = DATASETS[source.name]
        mean, std, names = meta.mean, meta.std, meta.class_names
    else:
        mean, std = pixel_statistics(images)
        names = _class_names(source, int(max(labels.max(), test_labels.max())) + 1)
    bad = [int(v) for v in np.concatenate([labels, test_labels]) if not 0 <= v < len(names)][:3]
    if bad:
        raise ValueError(f"{source.label}: labels {bad} are outside 0..{len(names) - 1} ({len(names)} class names).")
    flip = True if source.flip is None else source.flip
    return DatasetInfo(source.label, tuple(int(d) for d in images.shape[1:]), len(names), mean, std, flip, names)


def pixel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 `images` on [0, 1] pixels."""
    channels = images.shape[-1]
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].reshape(-1, channels).astype(np.float64) / 255.0
        total += chunk.sum(0)
        squares += np.square(chunk).sum(0)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0)) + 1e-3  # a constant channel stays finite
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _class_names(source: DataSource, count: int) -> tuple[str, ...]:
    if source.name == "folder":
        return _folder_arrays(source, "train")[2]
    if source.name == "npz":
        names = _npz_content(source.path).get("class_names")
        if names is not None:
            names = tuple(str(n) for n in np.asarray(names).reshape(-1))
            if len(names) < count:
                raise ValueError(f"{source.path}: {len(names)} class_names but labels go up to {count - 1}.")
            return names
    elif source.name.startswith("tfds:"):
        names = sources.tfds_class_names(source.name[5:], source.data_dir)
        if names:
            return names
    return tuple(str(i) for i in range(count))


def synthetic_arrays(split: str, num_examples: int | None = None, seed: int = 1234):
    """Learnable generated images: one random template per class plus noise.

    The templates depend only on `seed`, so train and test share classes;
    the noise depends on the split.
    """
    meta = DATASETS["synthetic"]
    count = num_examples or SYNTHETIC_SIZES["train" if split != "test" else "test"]
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(meta.num_classes, *meta.input_shape)).astype(np.float32)
    noise_rng = np.random.default_rng(seed + (1 if split == "test" else 0))
    labels = (np.arange(count) % meta.num_classes).astype(np.int32)
    noise_rng.shuffle(labels)
    noise = noise_rng.normal(size=(count, *meta.input_shape)).astype(np.float32)
    images = 128 + 48 * templates[labels] + 24 * noise
    return np.clip(images, 0, 255).astype(np.uint8), labels


@functools.lru_cache(maxsize=2)
def _folder_arrays(source: DataSource, split: str):
    folder = source.test_path if split == "test" else source.path
    class_names = None if split == "train" else _folder_arrays(source, "train")[2]
    return sources.read_image_folder(folder, source.image_size, source.channels, class_names)


@functools.lru_cache(maxsize=1)
def _npz_content(path: str) -> dict:
    """An .npz source read once for its train split, test split and class names."""
    return sources.read_npz(path)


def _own_split(source: DataSource, split: str):
    """(images, labels) of the source's own train or test split."""
    name = source.name
    if name == "fashion_mnist":
        return sources.load_fashion_mnist(split, source.data_dir)
    if name in ("cifar10", "cifar100"):
        return sources.load_tfds(name, split, source.data_dir)
    if name == "synthetic":
        return synthetic_arrays(split)
    if name == "folder":
        if split == "test" and source.test_path is None:
            raise ValueError("An image folder needs `test_path` (a folder with the same classes) or `test_fraction`.")
        return _folder_arrays(source, split)[:2]
    if name == "npz":
        content = _npz_content(source.path)
        return content[f"x_{split}"], content[f"y_{split}"]
    return sources.load_tfds(name[5:], split, source.data_dir, source.image_size)


def _source_arrays(source: DataSource, split: str):
    """(images, labels) of the source's train or test split: its own, or carved
    with `test_fraction`, resized to `image_size`."""
    if source.builtin and source.image_size is None and source.test_fraction is None:
        return _own_split(source, split)
    return _custom_arrays(source, split)


@functools.lru_cache(maxsize=4)
def _custom_arrays(source: DataSource, split: str):
    if source.test_fraction is not None:
        images, labels = _own_split(source, "train")
        held_out = stratified_take(labels, source.test_fraction, source.split_seed + 104729)
        keep = held_out if split == "test" else np.setdiff1d(np.arange(len(labels)), held_out)
        images, labels = images[keep], labels[keep]
    else:
        images, labels = _own_split(source, split)
    if source.image_size is not None and images.shape[1:3] != source.image_size:
        images = np.concatenate([
            sources.resize_uint8(images[i : i + 1024], source.image_size).numpy()
            for i in range(0, len(images), 1024)
        ]) if len(images) else images
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    images.flags.writeable = labels.flags.writeable = False  # cached: shared by every caller
    return images, labels


def stratified_take(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random `fraction` of `labels`.

    Each class keeps `round(fraction * count)` examples (at least one).
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        keep = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=keep, replace=False))
    return np.sort(np.concatenate(chosen))


def _check_fraction(name: str, value, allow_one: bool) -> None:
    if value is None:
        return
    upper_ok = value <= 1 if allow_one else value < 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value and upper_ok):
        bound = "(0, 1]" if allow_one else "(0, 1)"
        raise ValueError(f"`{name}` must be a fraction in {bound}, got {value!r}.")


def load_arrays(
    name: str | DataSource,
    split: str = "train",
    *,
    data_dir=None,
    subset_fraction: float | None = None,
    validation_fraction: float | None = None,
    subset_seed: int = 0,
):
    """uint8 images `(N, H, W, C)` and int32 labels `(N,)` of one split.

    `validation` is a class-balanced `validation_fraction` of the original
    training set; `train` is the rest, optionally reduced to a class-balanced
    `subset_fraction` of it. Both selections depend only on `subset_seed`,
    so every training seed sees the same examples. A split carved here
    (validation, `test_fraction`, subsets) must hold every class of the
    dataset, else the error names the missing ones.
    """
    source = as_source(name, data_dir)
    meta = info(source)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    _check_fraction("subset_fraction", subset_fraction, allow_one=True)
    _check_fraction("validation_fraction", validation_fraction, allow_one=False)
    if split == "test":
        if subset_fraction not in (None, 1.0):
            raise ValueError("subset_fraction applies to the training split only; the test set is always full.")
        test = _source_arrays(source, "test")
        return _check_classes(*test, meta, "test") if source.test_fraction else test
    if split == "validation" and not validation_fraction:
        raise ValueError("split='validation' needs validation_fraction > 0.")
    images, labels = _source_arrays(source, "train")
    if len(labels) == 0:
        raise ValueError(f"The {source.label} training split has no examples.")
    keep = np.arange(len(labels))
    if validation_fraction:
        held_out = stratified_take(labels, validation_fraction, subset_seed + 7919)
        if split == "validation":
            return _check_classes(images[held_out], labels[held_out], meta, split)
        keep = np.setdiff1d(keep, held_out)
    if subset_fraction is not None and subset_fraction < 1:
        keep = keep[stratified_take(labels[keep], subset_fraction, subset_seed)]
    if len(keep) == len(labels) and not source.test_fraction:
        return images, labels  # the source's own split, as it is
    return _check_classes(images[keep], labels[keep], meta, split)


def _check_classes(images, labels, meta: DatasetInfo, split: str):
    counts = np.bincount(labels, minlength=meta.num_classes)
    missing = [meta.class_names[c] if meta.class_names else str(c) for c in np.flatnonzero(counts == 0)]
    if missing:
        raise ValueError(
            f"{meta.name}: the {split} split has no images of class(es) {', '.join(map(repr, missing[:10]))}"
            f"{' ...' if len(missing) > 10 else ''}. Add images of those classes or use a smaller held-out fraction."
        )
    return images, labels


def normalization(name: str | DataSource, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) applied to [0, 1] pixels; (0, 1) without `normalize`."""
    check_flag("normalize", normalize)
    meta = info(name)
    mean = np.asarray(meta.mean, np.float32)
    if not normalize:
        return np.zeros_like(mean), np.ones_like(mean)
    return mean, np.asarray(meta.std, np.float32)


def standardize(images, name: str | DataSource, normalize: bool = True) -> np.ndarray:
    """uint8 images -> float32 network inputs, exactly as `load` scales them."""
    mean, std = normalization(name, normalize)
    return (np.asarray(images, np.float32) / 255.0 - mean) / std


def load(
    name: str | DataSource,
    split: str = "train",
    batch_size: int = 128,
    *,
    data_dir=None,
    subset_fraction: float | None = None,
    validation_fraction: float | None = None,
    subset_seed: int = 0,
    normalize: bool = True,
    augment: bool | Augmentation | None = None,
    pad: int = 4,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
    prefetch: bool = True,
    epochs: int | None = None,
    initial_epoch: int = 0,
    teacher_cache=None,
    with_index: bool = False,
) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of `(float32 image, int32 label)`.

    Random views are reproducible: the view of example `i` in epoch `e`
    depends only on `(seed, e, i)` (`keras_kd.data.Augmentation`), and the
    order of epoch `e` only on `(seed, e)`. With `epochs`, the dataset holds
    epochs `initial_epoch .. epochs - 1` back to back (pass
    `steps_per_epoch=batches_per_epoch(dataset, epochs, initial_epoch)` to
    `fit`, and the same `initial_epoch` when resuming); without it, one epoch
    whose epoch key is drawn afresh on every pass.

    Args:
        name: `fashion_mnist` (real data, found offline), `cifar10`,
            `cifar100` (tensorflow-datasets), `synthetic`, or a
            `DataSource` (image folder, .npz arrays, any tfds dataset).
        split: `train`, `validation` (carved from train) or `test`.
        subset_fraction: class-balanced fraction of the training data (e.g.
            0.1 for the low-data regime).
        validation_fraction: class-balanced fraction of the original training
            data held out as `validation` (and removed from `train`).
        normalize: standardize with the dataset's per-channel mean/std
            (otherwise pixels are scaled to [0, 1]).
        augment: pad-and-crop (`pad` pixels) plus horizontal flip seeded by
            `seed`, or an `Augmentation`; default: on for `train`, off otherwise.
        shuffle: a new order every epoch; default: on for `train`.
        seed: seed of shuffling and (for `augment=True`) augmentation.
        epochs, initial_epoch: the epochs the dataset spans (see above).
        teacher_cache: a `keras_kd.data.TeacherOutputCache` built for these
            images and this augmentation: batches become
            `({"image": x, "teacher1_logits": ...}, y)` holding the teachers'
            outputs for exactly these views, and the teachers need not run.
        with_index: batches become `({"image": x, "index": i}, y)` (the
            example's row in the split, e.g. for a memory bank).

    Example:

    >>> ds = load("synthetic", "train", batch_size=32)
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.dtype.name
    (TensorShape([32, 28, 28, 1]), 'int32')
    """
    name = as_source(name, data_dir)
    meta = info(name)
    batch_size = check_count("batch_size", batch_size, minimum=1)
    drop_remainder, prefetch = check_flag("drop_remainder", drop_remainder), check_flag("prefetch", prefetch)
    with_index = check_flag("with_index", with_index)
    shuffle = None if shuffle is None else check_flag("shuffle", shuffle)
    if augment is not None and not isinstance(augment, (bool, np.bool_, Augmentation)):
        raise TypeError(f"`augment` must be True, False, None or a data.Augmentation, got {augment!r}.")
    if epochs is not None and not (isinstance(epochs, int) and 0 <= initial_epoch < epochs):
        raise ValueError(f"Need 0 <= initial_epoch < epochs, got initial_epoch={initial_epoch!r}, epochs={epochs!r}.")
    images, labels = load_arrays(
        name,
        split,
        data_dir=data_dir,
        subset_fraction=subset_fraction,
        validation_fraction=validation_fraction,
        subset_seed=subset_seed,
    )
    training = split == "train"
    augment = training if augment is None else augment
    shuffle = training if shuffle is None else shuffle
    augmentation = augment if isinstance(augment, Augmentation) else (
        Augmentation(pad=pad, flip=meta.horizontal_flip, seed=seed) if augment else None
    )
    if teacher_cache is not None:
        teacher_cache.check_data(images, labels, augmentation)
        if augmentation is not None and epochs is None:
            raise ValueError(
                "A cache of augmented views is read per epoch: pass `epochs=` (and `initial_epoch=` "
                "when resuming) so every batch knows which epoch's views it holds."
            )
        if epochs is not None:
            teacher_cache.check_epochs(epochs)  # un-augmented caches serve any number of epochs
    mean, std = normalization(name, normalize)

    def scale(image):
        return (tf.cast(image, tf.float32) / 255.0 - mean) / std

    if augmentation is None and not shuffle and teacher_cache is None and not with_index and epochs is None:
        ds = tf.data.Dataset.from_tensor_slices((images, labels)).map(
            lambda image, label: (scale(image), label), num_parallel_calls=tf.data.AUTOTUNE
        )
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds

    count = len(labels)
    image_table, label_table = tf.constant(images), tf.constant(labels)

    def one_epoch(epoch):
        order = epoch_order(count, seed, epoch) if shuffle else tf.range(count, dtype=tf.int64)
        columns = teacher_cache.epoch_columns(epoch if augmentation is not None else 0) if teacher_cache else {}

        def example(index):
            image = tf.gather(image_table, index)
            if augmentation is not None:
                image = augmentation.view(image, epoch, index)
            image = scale(image)
            label = tf.gather(label_table, index)
            if not (columns or with_index):
                return image, label
            features = {"image": image, **teacher_cache.rows(columns, index)} if columns else {"image": image}
            if with_index:
                features["index"] = index
            return features, label

        batches = tf.data.Dataset.from_tensor_slices(order).map(example, num_parallel_calls=tf.data.AUTOTUNE)
        return batches.batch(batch_size, drop_remainder=drop_remainder)

    per_epoch = count // batch_size if drop_remainder else -(-count // batch_size)
    if epochs is None:
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        if augmentation is None and not shuffle:
            keys = tf.data.Dataset.from_tensors(tf.constant(0, tf.int64))
        total = per_epoch
    else:
        keys = tf.data.Dataset.range(initial_epoch, epochs)
        total = per_epoch * (epochs - initial_epoch)
    ds = keys.flat_map(one_epoch).apply(tf.data.experimental.assert_cardinality(total))
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def batches_per_epoch(dataset: tf.data.Dataset, epochs: int | None = None, initial_epoch: int = 0) -> int:
    """Batches in one epoch of a `load(...)` dataset (spanning `epochs`)."""
    total = int(dataset.cardinality())
    if total < 0:
        raise ValueError("The dataset's length is unknown: build it with keras_kd.data.load.")
    return total // (epochs - initial_epoch) if epochs else total


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Examples per class."""
    return np.bincount(np.asarray(labels), minlength=num_classes)
