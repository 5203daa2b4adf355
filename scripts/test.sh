#!/usr/bin/env bash
# The test command (README): installs into .venv if needed, then runs the whole suite on the CPU.
# Tests marked gpu/tensorrt skip themselves where those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest -q -p no:cacheprovider "$@"
