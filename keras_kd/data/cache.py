"""On-disk cache of frozen teachers' outputs, one row per training example.

N frozen teachers dominate the cost of an ensemble-distillation step; their
outputs on the (un-augmented) training images never change, so they can be
computed once and read back by `keras_kd.data.load(..., teacher_cache=...)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np

from keras_kd.taps import LOGITS, tap_model

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class CacheError(ValueError):
    """The cache is missing, corrupt, or was built for other images/teachers."""


def fingerprint(images: np.ndarray) -> str:
    """Content hash of an image array (shape, dtype and bytes)."""
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def weights_fingerprint(model: keras.Model) -> str:
    """Content hash of a model's weights (identifies a trained teacher)."""
    digest = hashlib.sha256(model.name.encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def output_key(teacher: int, kind: str) -> str:
    """Column name of teacher `teacher` (1-based): `teacher1_logits`, `teacher1_embedding`."""
    return f"teacher{teacher}_{kind}"


def teacher_ids(teachers: Sequence[keras.Model]) -> list[str]:
    return [f"{t.name}:{weights_fingerprint(t)}" for t in teachers]


class TeacherOutputCache:
    """Teacher logits (and embeddings) for every example of a training set.

    Rows follow the order of the training arrays (`keras_kd.data.load_arrays`
    with the same dataset, subset and seed). `fingerprint` identifies those
    images; `teachers` records the teachers as `name:weights-hash`. Build it once with
    `TeacherOutputCache.build`, reopen it with `TeacherOutputCache.load`.

    Example:

    >>> import tempfile, numpy as np
    >>> from keras_kd import models
    >>> images = np.zeros((6, 28, 28, 1), "uint8")
    >>> teacher = models.get("cnn", (28, 28, 1), 10)
    >>> folder = tempfile.mkdtemp()
    >>> cache = TeacherOutputCache.build([teacher], images, lambda x: x / 255.0, folder, verbose=0)
    >>> cache.arrays["teacher1_logits"].shape
    (6, 10)
    >>> TeacherOutputCache.load(folder).fingerprint == cache.fingerprint
    True
    """

    def __init__(self, arrays: dict[str, np.ndarray], fingerprint: str, teachers: Sequence[str]):
        lengths = {len(value) for value in arrays.values()}
        if len(lengths) != 1:
            raise CacheError(f"Cache columns have different lengths: {sorted(lengths)}.")
        self.arrays = arrays
        self.fingerprint = fingerprint
        self.teachers = list(teachers)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def has_embeddings(self) -> bool:
        return output_key(1, "embedding") in self.arrays

    @classmethod
    def build(
        cls,
        teachers: Sequence[keras.Model],
        images: np.ndarray,
        preprocess: Callable[[np.ndarray], np.ndarray],
        path: str | os.PathLike,
        embedding_layer: str | None = None,
        batch_size: int = 256,
        verbose: int = 1,
    ) -> TeacherOutputCache:
        """Runs every teacher once over `images` (in inference mode) and saves
        the outputs under `path` (`.npy` per column plus `manifest.json`).

        `preprocess` maps a uint8 batch to the network input (the same
        normalization as the training pipeline). With `embedding_layer`, the
        teachers' outputs of that layer are stored too.
        """
        if not teachers:
            raise ValueError("TeacherOutputCache.build needs at least one teacher.")
        views = [tap_model(t, [embedding_layer]) if embedding_layer else None for t in teachers]
        columns: dict[str, list] = {}
        progress = keras.utils.Progbar(len(images) * len(teachers), verbose=verbose, unit_name="image")
        for index, (teacher, view) in enumerate(zip(teachers, views, strict=True), start=1):
            for start in range(0, len(images), batch_size):
                batch = np.asarray(preprocess(images[start : start + batch_size]), np.float32)
                if view is None:
                    outputs = {LOGITS: teacher(batch, training=False)}
                else:
                    outputs = view(batch, training=False)
                columns.setdefault(output_key(index, "logits"), []).append(np.asarray(outputs[LOGITS]))
                if embedding_layer:
                    features = np.asarray(outputs[embedding_layer]).reshape(len(batch), -1)
                    columns.setdefault(output_key(index, "embedding"), []).append(features)
                progress.add(len(batch))
        arrays = {key: np.concatenate(parts).astype(np.float32) for key, parts in columns.items()}
        cache = cls(arrays, fingerprint(images), teacher_ids(teachers))
        cache.save(path)
        return cache

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for key, value in self.arrays.items():
            tmp = path / f".{key}.tmp.npy"
            np.save(tmp, value)
            os.replace(tmp, path / f"{key}.npy")
        manifest = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "teachers": self.teachers,
            "columns": {key: list(value.shape) for key, value in self.arrays.items()},
        }
        tmp = path / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path / MANIFEST)  # written last: a cache without it is incomplete
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherOutputCache:
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise CacheError(f"No teacher-output cache at {path} ({MANIFEST} is missing or was never completed).")
        try:
            manifest = json.loads(manifest_file.read_text())
            arrays = {}
            for key, shape in manifest["columns"].items():
                arrays[key] = np.load(path / f"{key}.npy")
                if list(arrays[key].shape) != shape:
                    raise CacheError(f"{path / key}.npy has shape {arrays[key].shape}, the manifest says {shape}.")
        except (OSError, ValueError, KeyError) as error:
            if isinstance(error, CacheError):
                raise
            raise CacheError(f"Teacher-output cache at {path} is corrupt: {error}") from error
        return cls(arrays, manifest["fingerprint"], manifest["teachers"])

    def check_images(self, images: np.ndarray) -> None:
        """Raises unless the cache was built for exactly these images."""
        if len(images) != len(self):
            raise CacheError(
                f"The teacher-output cache has {len(self)} rows but the training set has {len(images)} "
                "examples: it was built for another dataset/subset. Rebuild it."
            )
        if fingerprint(images) != self.fingerprint:
            raise CacheError(
                "The teacher-output cache was built for different training images (fingerprint "
                "mismatch: another dataset, subset or subset_seed). Rebuild it."
            )

    def check_teachers(self, teachers: Sequence[keras.Model], embeddings: bool) -> None:
        """Raises unless the cache holds outputs of these teachers (same weights, same order)."""
        names = teacher_ids(teachers)
        if names != self.teachers:
            raise CacheError(
                f"The teacher-output cache holds outputs of teachers {self.teachers}, "
                f"but the distiller's teachers are {names}. Rebuild it."
            )
        if embeddings and not self.has_embeddings:
            raise CacheError(
                "The distiller needs teacher embeddings but the cache holds logits only: "
                "rebuild it with embedding_layer set."
            )
