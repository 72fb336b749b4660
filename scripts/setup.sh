#!/usr/bin/env bash
# Idempotent set-up: Debian's Fashion-MNIST package (when apt is available),
# a virtual environment in .venv and keras-kd with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && SUDO="sudo"
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "[setup] installing Debian package dataset-fashion-mnist"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "[setup] could not install dataset-fashion-mnist; keras-kd will try the Keras cache/download"
  fi
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || { echo "[setup] creating .venv"; "$PYTHON" -m venv .venv; }
STAMP=.venv/.keras-kd-installed
WANT="$(cat setup.py | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing keras-kd and its dependencies into .venv (CPU TensorFlow)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$WANT" > "$STAMP"
fi
