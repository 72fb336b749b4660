"""`keras_kd.data.load`: batched `tf.data` pipelines of `(image, label)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

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


DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "synthetic": DatasetInfo("synthetic", (28, 28, 1), 10, (0.5,), (0.25,)),
}
SPLITS = ("train", "validation", "test")
SYNTHETIC_SIZES = {"train": 1000, "test": 300}


def info(name: str) -> DatasetInfo:
    """The `DatasetInfo` of a supported dataset."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Available: {', '.join(DATASETS)}.")
    return DATASETS[name]


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


def _raw_split(name: str, split: str, data_dir):
    """(images, labels) of the dataset's own train or test split."""
    if name == "fashion_mnist":
        return sources.load_fashion_mnist(split, data_dir)
    if name in ("cifar10", "cifar100"):
        return sources.load_tfds(name, split, data_dir)
    return synthetic_arrays(split)


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
    name: str,
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
    so every training seed sees the same examples.
    """
    info(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")
    _check_fraction("subset_fraction", subset_fraction, allow_one=True)
    _check_fraction("validation_fraction", validation_fraction, allow_one=False)
    if split == "test":
        if subset_fraction not in (None, 1.0):
            raise ValueError("subset_fraction applies to the training split only; the test set is always full.")
        return _raw_split(name, "test", data_dir)
    if split == "validation" and not validation_fraction:
        raise ValueError("split='validation' needs validation_fraction > 0.")
    images, labels = _raw_split(name, "train", data_dir)
    if len(labels) == 0:
        raise ValueError(f"The {name} training split has no examples.")
    keep = np.arange(len(labels))
    if validation_fraction:
        held_out = stratified_take(labels, validation_fraction, subset_seed + 7919)
        if split == "validation":
            return images[held_out], labels[held_out]
        keep = np.setdiff1d(keep, held_out)
    if subset_fraction is not None and subset_fraction < 1:
        keep = keep[stratified_take(labels[keep], subset_fraction, subset_seed)]
    return images[keep], labels[keep]


def normalization(name: str, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) applied to [0, 1] pixels; (0, 1) without `normalize`."""
    meta = info(name)
    mean = np.asarray(meta.mean, np.float32)
    if not normalize:
        return np.zeros_like(mean), np.ones_like(mean)
    return mean, np.asarray(meta.std, np.float32)


def standardize(images, name: str, normalize: bool = True) -> np.ndarray:
    """uint8 images -> float32 network inputs, exactly as `load` scales them."""
    mean, std = normalization(name, normalize)
    return (np.asarray(images, np.float32) / 255.0 - mean) / std


def load(
    name: str,
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
            `cifar100` (tensorflow-datasets) or `synthetic`.
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
    meta = info(name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
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
