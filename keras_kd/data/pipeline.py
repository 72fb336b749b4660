"""`keras_kd.data.load`: batched `tf.data` pipelines of `(image, label)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_kd.data import sources


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


def pad_crop_flip(image, seed, pad: int, flip: bool):
    """Random `pad`-pixel zero-pad-and-crop and horizontal flip of one image."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if pad:
        padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


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
    augment: bool | None = None,
    pad: int = 4,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
    prefetch: bool = True,
    teacher_cache=None,
    accept_augmentation: bool = False,
) -> tf.data.Dataset:
    """A batched `tf.data.Dataset` of `(float32 image, int32 label)`.

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
        augment: pad-and-crop (`pad` pixels) plus horizontal flip; default:
            on for `train`, off otherwise.
        shuffle: reshuffle every epoch; default: on for `train`.
        seed: seed of shuffling and augmentation.
        teacher_cache: a `keras_kd.data.TeacherOutputCache` built on this
            training set; batches become `({"image": x, "teacher1_logits": ...},
            y)`, each cached row travelling with its example through shuffling.
        accept_augmentation: the cache holds the teachers' outputs for the
            CLEAN images; with random augmentation on, the student would be
            matched to outputs of images the teachers never saw, so a cache
            plus `augment` is refused unless this is True.

    Example:

    >>> ds = load("synthetic", "train", batch_size=32)
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.dtype.name
    (TensorShape([32, 28, 28, 1]), 'int32')
    """
    meta = info(name)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
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
    if teacher_cache is not None:
        teacher_cache.check_images(images)
        if augment and not accept_augmentation:
            raise ValueError(
                "A teacher-output cache holds the teachers' outputs for the un-augmented images, "
                "but this pipeline applies random pad-crop/flip augmentation: the student would be "
                "taught on images the teachers never saw. Use augment=False, run the teachers "
                "online (no cache), or pass accept_augmentation=True to accept that mismatch."
            )
        images = {"image": images, **teacher_cache.arrays}
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    mean, std = normalization(name, normalize)

    def scale(image):
        return (tf.cast(image, tf.float32) / 255.0 - mean) / std

    def transform_image(features, function):
        if isinstance(features, dict):
            return {**features, "image": function(features["image"])}
        return function(features)

    if augment:
        flip = meta.horizontal_flip
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, noise).map(
            lambda example, rng: (
                transform_image(example[0], lambda image: scale(pad_crop_flip(image, rng, pad, flip))),
                example[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = ds.map(
            lambda features, label: (transform_image(features, scale), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """Examples per class."""
    return np.bincount(np.asarray(labels), minlength=num_classes)
