"""Embeddings for TensorBoard's projector (works with Keras 3, unlike
`keras.callbacks.TensorBoard(embeddings_freq=...)`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd.taps import tap_model


def collect_embeddings(
    model: keras.Model, batches: Iterable, tap: str | Sequence[str] = "embedding", max_images: int = 2000
) -> tuple[np.ndarray, np.ndarray]:
    """(features of layer `tap`, labels) for up to `max_images` test images.

    With several taps (e.g. every branch of a multi-branch student) their
    flattened outputs are concatenated per image."""
    taps = [tap] if isinstance(tap, str) else list(tap)
    view = tap_model(model, taps)
    features, labels, seen = [], [], 0
    for images, batch_labels in batches:
        outputs = view(images, training=False)
        out = np.concatenate([np.asarray(outputs[t]).reshape(len(images), -1) for t in taps], axis=-1)
        features.append(out)
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


def project_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates of `embeddings` by t-SNE (scikit-learn) or PCA (numpy)."""
    embeddings = np.asarray(embeddings, np.float64)
    if method == "pca":
        centered = embeddings - embeddings.mean(axis=0)
        _, _, components = np.linalg.svd(centered, full_matrices=False)
        return centered @ components[:2].T
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = min(30.0, max(2.0, (len(embeddings) - 1) / 3))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(embeddings)
    raise ValueError(f"`method` must be 'tsne' or 'pca', got {method!r}.")


def plot_embeddings(
    panels: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | os.PathLike,
    method: str = "tsne",
    class_names: Sequence[str] | None = None,
) -> Path:
    """One scatter plot per `title -> (embeddings, labels)`, side by side, as a PNG
    (the t-SNE figure of the EKD paper). Needs matplotlib (`pip install keras-kd[plots]`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for axis, (title, (embeddings, labels)) in zip(axes[0], panels.items(), strict=True):
        points = project_2d(embeddings, method)
        scatter = axis.scatter(points[:, 0], points[:, 1], c=np.asarray(labels), cmap="tab10", s=3, alpha=0.7)
        axis.set_title(title, fontsize=10)
        axis.set_xticks([])
        axis.set_yticks([])
    handles, _ = scatter.legend_elements()
    names = list(class_names) if class_names else [str(i) for i in range(len(handles))]
    figure.legend(handles, names[: len(handles)], loc="lower center", ncol=min(10, len(handles)), fontsize=8)
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
