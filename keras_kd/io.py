"""Crash-safe writes: a temporary file renamed into place, so an interrupted
run never leaves a truncated model or report."""

from __future__ import annotations

import os
from pathlib import Path

import keras


def atomic_save(model: keras.Model, path: str | os.PathLike) -> Path:
    """`model.save(path)` through a temporary file + rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    model.save(tmp)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
