"""TFLite / LiteRT export (float32, dynamic-range, full-integer int8) with a parity report."""

from __future__ import annotations

import contextlib
import io
import os
import re
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

QUANTIZATIONS = ("none", "dynamic", "int8")


class ExportError(RuntimeError):
    """The model cannot be converted to TFLite; the message names the cause."""


def deployable(model: keras.Model) -> keras.Model:
    """The model to ship: what a distiller trains for (`BaseDistiller.deployable`),
    any other model as it is."""
    from keras_kd.distillers.base import BaseDistiller

    return model.deployable() if isinstance(model, BaseDistiller) else model


def _representative(images: Iterable, count: int):
    def generator():
        seen = 0
        for batch in images:
            batch = np.asarray(batch[0] if isinstance(batch, (tuple, list)) else batch, np.float32)
            for image in batch:
                yield [image[None]]
                seen += 1
                if seen >= count:
                    return

    return generator


def convert(
    model: keras.Model,
    quantize: str = "none",
    representative_data: Iterable | None = None,
    num_calibration: int = 200,
) -> bytes:
    """TFLite flatbuffer of `model` (a distiller exports its student), through
    Keras' `model.export(format="litert")`.

    `quantize`: `none` (float32), `dynamic` (int8 weights, float
    activations) or `int8` (int8 weights and activations, calibrated on
    `num_calibration` images from `representative_data`, an iterable of
    image batches or `(images, labels)` batches; inputs/outputs stay float32).
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}, got {quantize!r}.")
    model = deployable(model)
    # Keras' own LiteRT export; builtin ops only (Keras also allows SELECT_TF_OPS,
    # which would need the Flex delegate on the phone).
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        if representative_data is None:
            raise ValueError("int8 quantization needs representative_data (training images).")
        options["representative_dataset"] = _representative(representative_data, num_calibration)
        options["target_spec"] = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]}
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()):
            target = os.path.join(folder, "model.tflite")
            model.export(target, format="litert", verbose=False, **options)
            return Path(target).read_bytes()
    except Exception as error:  # the converter raises several types
        ops = sorted(set(re.findall(r"'?(tf\.[A-Za-z0-9_]+)'?", str(error))))
        detail = f" Unsupported ops: {', '.join(ops)}." if ops else ""
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"TFLite conversion of {model.name!r} failed.{detail} Converter said: {first}") from error


def export_tflite(
    model: keras.Model,
    path: str | os.PathLike,
    quantize: str = "none",
    representative_data: Iterable | None = None,
    num_calibration: int = 200,
) -> Path:
    """Converts and writes atomically (temporary file + rename).

    Example:

    >>> import tempfile, keras
    >>> from keras_kd import models
    >>> model = models.get("cnn", (28, 28, 1), 10)
    >>> path = export_tflite(model, tempfile.mkdtemp() + "/cnn.tflite")
    >>> path.suffix
    '.tflite'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flatbuffer = convert(model, quantize, representative_data, num_calibration)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, path)
    return path


def interpreter(path: str | os.PathLike):
    """A LiteRT interpreter (`ai-edge-litert`), or TensorFlow's as a fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the optional extra
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=str(path))


class TFLiteRunner:
    """Runs a TFLite file through its serving signature, reading outputs by name."""

    def __init__(self, path: str | os.PathLike, output: str | None = None):
        self.interpreter = interpreter(path)
        signatures = list(self.interpreter.get_signature_list())
        key = "serving_default" if "serving_default" in signatures or not signatures else signatures[0]
        self.runner = self.interpreter.get_signature_runner(key)
        details = self.runner.get_input_details()
        if len(details) != 1:
            raise ValueError(f"{path} has {len(details)} inputs; expected one image input.")
        self.input_name = next(iter(details))
        outputs = sorted(self.runner.get_output_details())
        if output is None and len(outputs) != 1:
            raise ValueError(f"{path} has outputs {outputs}; name the one to read with `output=`.")
        if output is not None and output not in outputs:
            raise ValueError(f"{path} has no output {output!r}; it has {outputs}.")
        self.output_name = output or outputs[0]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Logits of ONE image batch of size 1."""
        result = self.runner(**{self.input_name: np.asarray(image, np.float32)})
        return np.asarray(result[self.output_name])

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self(image[None]) for image in images])


def parity_report(
    model: keras.Model,
    tflite_path: str | os.PathLike,
    test_data: Iterable,
    max_images: int | None = None,
    latency_runs: int = 50,
) -> dict:
    """Compares a TFLite file with the Keras model on `(images, labels)` batches.

    Returns top-1 agreement, max/mean |logit difference|, accuracy of both,
    file size and the median single-image latency of the interpreter.
    """
    model = deployable(model)
    runner = TFLiteRunner(tflite_path)
    keras_logits, lite_logits, labels = [], [], []
    seen = 0
    for images, batch_labels in test_data:
        images = np.asarray(images, np.float32)
        if max_images is not None:
            images, batch_labels = images[: max_images - seen], np.asarray(batch_labels)[: max_images - seen]
        keras_logits.append(np.asarray(model(images, training=False)))
        lite_logits.append(runner.predict(images))
        labels.append(np.asarray(batch_labels))
        seen += len(images)
        if max_images is not None and seen >= max_images:
            break
    if not labels:
        raise ValueError("parity_report got no test data.")
    keras_logits, lite_logits = np.concatenate(keras_logits), np.concatenate(lite_logits)
    labels = np.concatenate(labels).reshape(-1)
    diff = np.abs(keras_logits.astype(np.float64) - lite_logits)
    image = np.asarray(next(iter(test_data))[0], np.float32)[:1]
    for _ in range(5):
        runner(image)
    timings = []
    for _ in range(latency_runs):
        start = time.perf_counter()
        runner(image)
        timings.append(time.perf_counter() - start)
    return {
        "file": str(tflite_path),
        "size_bytes": os.path.getsize(tflite_path),
        "images": int(len(labels)),
        "top1_agreement": float(np.mean(keras_logits.argmax(-1) == lite_logits.argmax(-1))),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "keras_accuracy": float(np.mean(keras_logits.argmax(-1) == labels)),
        "tflite_accuracy": float(np.mean(lite_logits.argmax(-1) == labels)),
        "latency_ms_median": 1000 * statistics.median(timings),
    }
