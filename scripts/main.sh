#!/usr/bin/env bash
# The main job: teacher (reused from saved_models/reference or trained),
# baseline student and KD student on real Fashion-MNIST, then a table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/keras-kd quickstart "$@"
