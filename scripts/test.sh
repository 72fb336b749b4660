#!/usr/bin/env bash
# The test suite: lint, then pytest on two worker processes (pytest-xdist; CPU only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check keras_kd trainers tests benchmarks
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 tests "$@"
