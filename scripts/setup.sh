#!/usr/bin/env bash
# Creates .venv (if missing) and installs DiffDef with training, export and test extras.
# torch is pinned first to the CPU build that lies on this machine's disk: a bare `torch` requirement would
# pull a multi-GB CUDA build. On a GPU machine, install the torch build you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==${DIFFDEF_TORCH_VERSION:-2.13.0}"
fi
python -m pip install -q -e ".[dev]"
