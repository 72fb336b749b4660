"""Datasets as batched `tf.data` pipelines: Fashion-MNIST, CIFAR, synthetic."""

from keras_kd.data.pipeline import (
    DATASETS,
    DatasetInfo,
    class_counts,
    info,
    load,
    load_arrays,
    stratified_take,
    synthetic_arrays,
)
from keras_kd.data.sources import DatasetNotFoundError, fashion_mnist_search_path, read_idx

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "class_counts",
    "fashion_mnist_search_path",
    "info",
    "load",
    "load_arrays",
    "read_idx",
    "stratified_take",
    "synthetic_arrays",
]
