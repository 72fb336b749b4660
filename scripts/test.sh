#!/usr/bin/env bash
# The test suite: lint, then pytest (CPU only, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES=""
.venv/bin/ruff check keras_kd trainers tests benchmarks
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests "$@"
