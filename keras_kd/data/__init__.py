"""Datasets as batched `tf.data` pipelines (Fashion-MNIST, CIFAR, image folders,
.npz arrays, any tfds dataset, synthetic),
seeded augmentation and the teacher-output cache."""

from keras_kd.data.augment import Augmentation
from keras_kd.data.cache import CacheError, TeacherOutputCache
from keras_kd.data.pipeline import (
    DATASETS,
    DatasetInfo,
    DataSource,
    as_source,
    batches_per_epoch,
    class_counts,
    info,
    load,
    load_arrays,
    pixel_statistics,
    standardize,
    stratified_take,
    synthetic_arrays,
)
from keras_kd.data.sources import DatasetNotFoundError, fashion_mnist_search_path, read_idx

__all__ = [
    "Augmentation",
    "batches_per_epoch",
    "CacheError",
    "DATASETS",
    "DataSource",
    "as_source",
    "pixel_statistics",
    "TeacherOutputCache",
    "DatasetInfo",
    "DatasetNotFoundError",
    "class_counts",
    "fashion_mnist_search_path",
    "info",
    "load",
    "load_arrays",
    "read_idx",
    "standardize",
    "stratified_take",
    "synthetic_arrays",
]
