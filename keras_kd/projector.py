"""Embeddings for TensorBoard's projector (works with Keras 3, unlike
`keras.callbacks.TensorBoard(embeddings_freq=...)`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd.taps import tap_model


def collect_embeddings(
    model: keras.Model, batches: Iterable, tap: str = "embedding", max_images: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """(features of layer `tap`, labels) for up to `max_images` test images."""
    view = tap_model(model, [tap])
    features, labels, seen = [], [], 0
    for images, batch_labels in batches:
        out = view(images, training=False)[tap]
        features.append(np.asarray(out).reshape(len(out), -1))
        labels.append(np.asarray(batch_labels).reshape(-1))
        seen += len(out)
        if seen >= max_images:
            break
    if not features:
        raise ValueError("collect_embeddings got no data.")
    return np.concatenate(features)[:max_images], np.concatenate(labels)[:max_images]


def write_projector(
    logdir: str | os.PathLike,
    embeddings: np.ndarray,
    labels: np.ndarray,
    name: str = "embedding",
    class_names: list[str] | None = None,
) -> Path:
    """Writes a checkpoint of `embeddings`, `metadata.tsv` and the projector config.

    Open `tensorboard --logdir LOGDIR` and pick the Projector tab.
    """
    from tensorboard.plugins import projector

    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    with open(logdir / "metadata.tsv", "w") as f:
        for label in labels:
            f.write(f"{class_names[int(label)] if class_names else int(label)}\n")
    variable = tf.Variable(np.asarray(embeddings, np.float32), name=name)
    checkpoint = tf.train.Checkpoint(embedding=variable)
    checkpoint.save(str(logdir / f"{name}.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(str(logdir), config)
    return logdir
