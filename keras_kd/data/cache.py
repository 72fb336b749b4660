"""On-disk cache of frozen teachers' outputs for every augmented view a
student will see (Fast Knowledge Distillation, Shen & Xing, ECCV 2022).

Views are reproducible per `(seed, epoch, example)` (`keras_kd.data.Augmentation`),
so the teachers' outputs for each view of each epoch can be computed once,
stored, and replayed by any later run with the same images, teachers and
augmentation: the teachers then cost nothing during training. Without
augmentation one set of outputs serves every epoch.

Layout: `manifest.json` (fingerprints, columns, complete epochs) and one raw
file per column and epoch, `epoch_0007/teacher1_logits.bin`, read back by
`tf.data` one epoch at a time, so memory holds one epoch of one column at most.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_kd.checks import check_count
from keras_kd.data.augment import Augmentation
from keras_kd.io import atomic_write_text
from keras_kd.taps import LOGITS

MANIFEST = "manifest.json"
FORMAT_VERSION = 2
DTYPES = ("float16", "float32")


class CacheError(ValueError):
    """The cache is missing, corrupt, too large, or was built for other
    images, teachers, augmentation or epochs."""


def fingerprint(images: np.ndarray, labels: np.ndarray | None = None) -> str:
    """Content hash of a training set (shapes, dtypes and bytes)."""
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    if labels is not None:
        digest.update(np.ascontiguousarray(np.asarray(labels, np.int64)).tobytes())
    return digest.hexdigest()[:24]


def weights_fingerprint(model: keras.Model) -> str:
    """Content hash of a model's weights (identifies a trained teacher)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def output_key(teacher: int, name: str) -> str:
    """Column of output `name` (`logits` or a layer) of teacher `teacher` (1-based)."""
    return f"teacher{teacher}_{name}"


def outputs_of(view: keras.Model) -> list[str]:
    """The output names of a frozen teacher view: `logits` plus its taps."""
    try:
        output = view.output
    except (AttributeError, ValueError):  # a subclassed model: logits only
        return [LOGITS]
    return list(output) if isinstance(output, dict) else [LOGITS]


def teacher_ids(views: Sequence[keras.Model]) -> list[str]:
    """`weights-hash:output,output` per teacher view (order matters)."""
    return [f"{weights_fingerprint(v)}:{','.join(outputs_of(v))}" for v in views]


def _augmentation_config(augmentation: Augmentation | None) -> dict | None:
    return None if augmentation is None else augmentation.get_config()


class TeacherOutputCache:
    """Frozen teachers' outputs for every `(epoch, example)` view of a training set.

    Build (or extend) it with `TeacherOutputCache.build`, reopen it with
    `TeacherOutputCache.load`, and hand it to `keras_kd.data.load(...,
    teacher_cache=cache, epochs=...)`: each batch then carries
    `teacher1_logits` (and any cached taps) for exactly the views it holds,
    and a distiller reads them instead of running its teachers. A distiller
    builds the cache of its own teachers with `build_teacher_cache`.

    Storage: `float16` (default; logits and features rounded to about 3
    significant digits) or `float32`. With `top_k`, logits are stored as the
    top-k log-probabilities and their class indices; the remaining
    probability mass is spread evenly over the other classes when read back
    (the reconstruction Fast KD uses for ImageNet's 1000 classes; softmax of
    the result at any temperature is exact on the top-k classes' ratios).

    Refused with `CacheError`: other images or labels, other teachers (weights
    hash and outputs), another augmentation (kind, pad, flip, seed), a run
    needing more epochs than were built (build again with more `epochs`: the
    missing epochs are added), a cache over `max_bytes`.

    Example:

    >>> import tempfile, numpy as np
    >>> from keras_kd import data, models
    >>> images = np.zeros((6, 28, 28, 1), "uint8"); labels = np.arange(6) % 10
    >>> teacher = models.get("cnn", (28, 28, 1), 10)
    >>> folder = tempfile.mkdtemp()
    >>> cache = TeacherOutputCache.build(
    ...     [teacher], images, labels, folder, preprocess=lambda x: x / 255.0,
    ...     augmentation=data.Augmentation(pad=2, seed=0), epochs=2, verbose=0)
    >>> cache.epochs, cache.columns["teacher1_logits"]["shape"]
    (2, [10])
    """

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path)
        self.manifest = manifest

    # -- facts ----------------------------------------------------------------

    @property
    def epochs(self) -> int:
        """Complete epochs stored (1 for un-augmented data: every epoch reads it)."""
        return int(self.manifest["epochs"])

    @property
    def columns(self) -> dict[str, dict]:
        return self.manifest["columns"]

    @property
    def num_examples(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def augmentation(self) -> dict | None:
        return self.manifest["augmentation"]

    def __len__(self) -> int:
        return self.num_examples

    def nbytes(self, epochs: int | None = None) -> int:
        """Bytes on disk for `epochs` (default: the stored ones)."""
        per_example = sum(_row_bytes(column) for column in self.columns.values())
        return per_example * self.num_examples * (self.epochs if epochs is None else epochs)

    # -- building -------------------------------------------------------------

    @classmethod
    def build(
        cls,
        teachers: Sequence[keras.Model],
        images: np.ndarray,
        labels: np.ndarray,
        path: str | os.PathLike,
        *,
        preprocess: Callable[[np.ndarray], np.ndarray],
        augmentation: Augmentation | None = None,
        epochs: int = 1,
        dtype: str = "float16",
        top_k: int | None = None,
        max_bytes: float = 4e9,
        batch_size: int = 512,
        verbose: int = 1,
    ) -> TeacherOutputCache:
        """Runs every teacher (in inference mode) over the views of epochs
        `0 .. epochs - 1` that are not stored yet, and saves their outputs.

        Args:
            teachers: frozen networks returning logits, or tap views returning
                `{"logits": ..., "<layer>": ...}` (every output is stored).
            images, labels: the training set, uint8 images in the order of
                `keras_kd.data.load_arrays`.
            path: folder of the cache (created; an existing cache there is
                extended if it matches, refused otherwise).
            preprocess: maps a uint8 image batch to the networks' input (the
                normalization of the training pipeline).
            augmentation: the pipeline's augmentation (None: un-augmented,
                one set of outputs for every epoch).
            epochs: epochs of views to store (ignored without augmentation).
            dtype: `float16` or `float32` storage.
            top_k: store logits as top-k log-probabilities (see the class doc).
            max_bytes: refuse a cache larger than this.
        """
        if not teachers:
            raise ValueError("TeacherOutputCache.build needs at least one teacher.")
        if dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {DTYPES}, got {dtype!r}.")
        top_k = check_count("top_k", top_k, minimum=1, optional=True)
        epochs = check_count("epochs", epochs, minimum=1)
        images, labels = np.asarray(images), np.asarray(labels)
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"Need as many labels as images (> 0), got {len(images)} and {len(labels)}.")
        epochs = epochs if augmentation is not None else 1
        probe = np.asarray(preprocess(images[:1]), np.float32)
        columns = {}
        for index, teacher in enumerate(teachers, start=1):
            outputs = teacher(probe, training=False)
            outputs = outputs if isinstance(outputs, dict) else {LOGITS: outputs}
            for name, value in outputs.items():
                shape = [int(d) for d in value.shape[1:]]
                k = top_k if (name == LOGITS and top_k is not None and top_k < shape[-1]) else None
                columns[output_key(index, name)] = {"shape": shape, "dtype": dtype, "top_k": k}
        manifest = {
            "format": FORMAT_VERSION,
            "data": fingerprint(images, labels),
            "num_examples": len(images),
            "augmentation": _augmentation_config(augmentation),
            "teachers": teacher_ids(teachers),
            "columns": columns,
            "epochs": 0,
        }
        path = Path(path)
        cache = cls(path, manifest)
        if (path / MANIFEST).is_file():
            cache = cls.load(path)
            cache._check_same_recipe(manifest)
        if cache.nbytes(epochs) > max_bytes:
            sizes = ", ".join(f"{key} {_row_bytes(c)} B" for key, c in columns.items())
            raise CacheError(
                f"A teacher cache of {epochs} epoch(s) x {len(images)} examples would take "
                f"{cache.nbytes(epochs) / 1e9:.2f} GB (> max_bytes {max_bytes / 1e9:.2f} GB; per example: {sizes}). "
                "Cache logits only (no feature taps), use top_k, fewer epochs, or raise max_bytes."
            )
        missing = range(cache.epochs, epochs)
        if not missing:
            return cache
        path.mkdir(parents=True, exist_ok=True)
        functions = [tf.function(lambda x, t=t: t(x, training=False)) for t in teachers]
        progress = keras.utils.Progbar(len(missing) * len(images), verbose=verbose, unit_name="view")
        for epoch in missing:
            views = _views(images, augmentation, epoch, batch_size)
            parts: dict[str, list] = {key: [] for key in columns}
            for batch in views:
                inputs = np.asarray(preprocess(batch.numpy()), np.float32)
                for index, function in enumerate(functions, start=1):
                    outputs = function(inputs)
                    outputs = outputs if isinstance(outputs, dict) else {LOGITS: outputs}
                    for name, value in outputs.items():
                        parts[output_key(index, name)].append(np.asarray(value, np.float32))
                progress.add(len(inputs))
            folder = path / f"epoch_{epoch:04d}"
            folder.mkdir(exist_ok=True)
            for key, chunks in parts.items():
                for suffix, array in _encode(np.concatenate(chunks), columns[key]).items():
                    tmp = folder / f".{key}{suffix}.tmp"
                    tmp.write_bytes(array.tobytes())
                    os.replace(tmp, folder / f"{key}{suffix}.bin")
            cache.manifest["epochs"] = epoch + 1  # written after the epoch's files: a crash loses one epoch
            atomic_write_text(path / MANIFEST, json.dumps(cache.manifest, indent=2))
        return cache

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherOutputCache:
        path = Path(path)
        manifest_file = path / MANIFEST
        if not manifest_file.is_file():
            raise CacheError(f"No teacher-output cache at {path} ({MANIFEST} is missing or was never completed).")
        try:
            manifest = json.loads(manifest_file.read_text())
        except ValueError as error:
            raise CacheError(f"Teacher-output cache at {path} is corrupt: {error}") from error
        if manifest.get("format") != FORMAT_VERSION:
            raise CacheError(
                f"Teacher-output cache at {path} has format {manifest.get('format')!r}; this version reads "
                f"{FORMAT_VERSION}. Delete it and build it again."
            )
        cache = cls(path, manifest)
        for epoch in range(cache.epochs):
            for key, column in cache.columns.items():
                for suffix, (dtype, width) in _files(column).items():
                    file = path / f"epoch_{epoch:04d}" / f"{key}{suffix}.bin"
                    expected = cache.num_examples * width * np.dtype(dtype).itemsize
                    if not file.is_file() or file.stat().st_size != expected:
                        raise CacheError(f"Teacher-output cache at {path} is corrupt: {file} is missing or truncated.")
        return cache

    # -- checks ---------------------------------------------------------------

    def _check_same_recipe(self, manifest: dict) -> None:
        for key, what in (("data", "training images/labels"), ("augmentation", "augmentation"),
                          ("teachers", "teachers (weights or outputs)"), ("columns", "stored columns")):
            if self.manifest[key] != manifest[key]:
                raise CacheError(
                    f"The teacher-output cache at {self.path} was built for other {what}: it holds "
                    f"{self.manifest[key]}, this run has {manifest[key]}. Use another folder or delete it."
                )

    def check_data(self, images: np.ndarray, labels: np.ndarray, augmentation: Augmentation | None) -> None:
        """Raises unless the cache was built for these images, labels and views."""
        if len(images) != self.num_examples:
            raise CacheError(
                f"The teacher-output cache has {self.num_examples} rows but the training set has {len(images)} "
                "examples: it was built for another dataset/subset. Rebuild it."
            )
        if fingerprint(images, labels) != self.manifest["data"]:
            raise CacheError(
                "The teacher-output cache was built for different training images (fingerprint "
                "mismatch: another dataset, subset or subset_seed). Rebuild it."
            )
        if _augmentation_config(augmentation) != self.augmentation:
            raise CacheError(
                f"The teacher-output cache holds views of augmentation {self.augmentation}, but the pipeline "
                f"uses {_augmentation_config(augmentation)}: its outputs belong to other images. Build a "
                "cache with this augmentation (same pad, flip and seed)."
            )

    def check_epochs(self, epochs: int) -> None:
        """Raises unless views of epochs `0 .. epochs - 1` are stored."""
        if self.augmentation is not None and epochs > self.epochs:
            raise CacheError(
                f"The teacher-output cache holds {self.epochs} epoch(s) of augmented views but the run needs "
                f"{epochs}. Build it again with epochs={epochs} (only the missing epochs are computed)."
            )

    def check_teachers(self, teachers: Sequence[keras.Model]) -> None:
        """Raises unless the cache holds these teacher views' outputs (weights, outputs, order)."""
        ids = teacher_ids(teachers)
        if ids != self.manifest["teachers"]:
            raise CacheError(
                f"The teacher-output cache holds outputs of teachers {self.manifest['teachers']} "
                f"(weights-hash:outputs), but the distiller's are {ids}. Rebuild it for these teachers."
            )

    # -- reading (tf.data) ----------------------------------------------------

    def epoch_columns(self, epoch) -> dict[str, tf.Tensor]:
        """Every stored array of one epoch, `{file key: (N, width)}` tensors
        (graph ops: usable inside `tf.data` functions)."""
        folder = tf.strings.join([str(self.path), "/epoch_", tf.strings.as_string(epoch, width=4, fill="0"), "/"])
        arrays = {}
        for key, column in self.columns.items():
            for suffix, (dtype, width) in _files(column).items():
                stored = "uint16" if dtype == "float16" else dtype  # bit patterns: see half_bits_to_float32
                raw = tf.io.decode_raw(tf.io.read_file(tf.strings.join([folder, f"{key}{suffix}.bin"])), stored)
                arrays[f"{key}{suffix}"] = tf.reshape(raw, [self.num_examples, width])
        return arrays

    def epoch_outputs(self, epoch: int) -> dict[str, np.ndarray]:
        """Every cached output of one training epoch as float32 arrays,
        `{column: (N, *shape)}`, in example order, read back exactly as training
        reads them (`rows`): what to inspect a cache with (e.g. how soft its
        logits are at a temperature). A cache without augmentation serves its one
        stored epoch to every epoch; a `top_k` logits column holds the top-k
        log-probabilities with the rest of the mass spread evenly (see the class).

        Raises:
            CacheError: for an augmented cache, an epoch it does not hold.

        Example:

        >>> import tempfile, numpy as np
        >>> from keras_kd import models
        >>> teacher = models.get("cnn", (28, 28, 1), 10)
        >>> cache = TeacherOutputCache.build([teacher], np.zeros((3, 28, 28, 1), "uint8"), np.arange(3),
        ...                                  tempfile.mkdtemp(), preprocess=lambda x: x / 255.0, verbose=0)
        >>> cache.epoch_outputs(0)["teacher1_logits"].shape
        (3, 10)
        """
        epoch = check_count("epoch", epoch)
        if self.augmentation is None:
            epoch = 0
        elif epoch >= self.epochs:
            raise CacheError(f"The cache holds epochs 0..{self.epochs - 1}; epoch {epoch} was asked for.")
        arrays = self.epoch_columns(epoch)
        rows = tf.data.Dataset.range(self.num_examples).map(lambda index: self.rows(arrays, index))
        return {key: np.asarray(values) for key, values in rows.batch(self.num_examples).get_single_element().items()}

    def rows(self, arrays: dict[str, tf.Tensor], index) -> dict[str, tf.Tensor]:
        """The float32 outputs of example `index` from `epoch_columns` arrays."""
        out = {}
        for key, column in self.columns.items():
            k = column["top_k"]
            if k is None:
                row = _as_float32(tf.gather(arrays[key], index))
                out[key] = tf.reshape(row, column["shape"])
                continue
            values = _as_float32(tf.gather(arrays[f"{key}.values"], index))
            classes = tf.cast(tf.gather(arrays[f"{key}.indices"], index), tf.int32)
            num_classes = column["shape"][-1]
            rest = tf.maximum(1.0 - tf.reduce_sum(tf.exp(values)), 1e-12) / (num_classes - k)
            dense = tf.fill([num_classes], tf.math.log(rest))
            out[key] = tf.tensor_scatter_nd_update(dense, classes[:, None], values)
        return out


def _as_float32(values: tf.Tensor) -> tf.Tensor:
    return half_bits_to_float32(values) if values.dtype == tf.uint16 else tf.cast(values, tf.float32)


def half_bits_to_float32(bits: tf.Tensor) -> tf.Tensor:
    """IEEE binary16 bit patterns (uint16) as exact float32 values, by integer
    arithmetic: TensorFlow's float16 Cast kernel logs a oneDNN error line on
    CPUs without AVX-512 FP16 support, on every run that reads a float16 cache.

    Example:

    >>> import numpy as np
    >>> halves = np.array([1.5, -2.0, 6e-8, np.inf], np.float16)
    >>> half_bits_to_float32(tf.constant(halves.view(np.uint16))).numpy().tolist() == halves.astype(np.float32).tolist()
    True
    """
    h = tf.cast(bits, tf.int32)
    negative = tf.bitwise.right_shift(h, 15) == 1
    exponent = tf.bitwise.bitwise_and(tf.bitwise.right_shift(h, 10), 0x1F)
    mantissa = tf.bitwise.bitwise_and(h, 0x3FF)
    normal = tf.bitwise.bitwise_or(tf.bitwise.left_shift(exponent + 112, 23), tf.bitwise.left_shift(mantissa, 13))
    special = tf.bitwise.bitwise_or(tf.constant(0x7F800000, tf.int32), tf.bitwise.left_shift(mantissa, 13))
    magnitude = tf.bitcast(tf.where(exponent == 31, special, normal), tf.float32)  # inf/nan keep their payload
    magnitude = tf.where(exponent == 0, tf.cast(mantissa, tf.float32) * 2.0**-24, magnitude)  # zero, subnormals
    return tf.where(negative, -magnitude, magnitude)


def _files(column: dict) -> dict[str, tuple[str, int]]:
    """`{suffix: (dtype, values per example)}` of one column's files."""
    width = int(np.prod(column["shape"]))
    if column["top_k"] is None:
        return {"": (column["dtype"], width)}
    return {".values": (column["dtype"], column["top_k"]), ".indices": ("int32", column["top_k"])}


def _row_bytes(column: dict) -> int:
    return sum(np.dtype(dtype).itemsize * width for dtype, width in _files(column).values())


def _encode(values: np.ndarray, column: dict) -> dict[str, np.ndarray]:
    """Arrays to store for one column (little-endian, as `tf.io.decode_raw` reads them)."""
    values = values.reshape(len(values), -1)
    if column["top_k"] is None:
        return {"": values.astype(np.dtype(column["dtype"]).newbyteorder("<"))}
    k = column["top_k"]
    shifted = values - values.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    classes = np.argsort(-log_probs, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(log_probs, classes, axis=1)
    return {".values": top.astype(np.dtype(column["dtype"]).newbyteorder("<")),
            ".indices": classes.astype(np.dtype("int32").newbyteorder("<"))}


def _views(images: np.ndarray, augmentation: Augmentation | None, epoch: int, batch_size: int) -> tf.data.Dataset:
    """uint8 views of `epoch`, in example order, batched (what the pipeline
    shows the student, before normalization)."""
    table = tf.constant(images)

    def view(index):
        image = tf.gather(table, index)
        return image if augmentation is None else augmentation.view(image, epoch, index)

    ds = tf.data.Dataset.range(len(images)).map(view, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
