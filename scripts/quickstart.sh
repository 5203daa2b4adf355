#!/usr/bin/env bash
# The main job on the embedded default (the synthetic ageing cohort; nothing is downloaded):
# train the default preset, export an ONNX bundle, and generate the atlas at age 70 without PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
diffdef-train all --preset default --out runs/default
diffdef-export runs/default -o runs/default/bundle --force
diffdef-run --age 70 --bundle runs/default/bundle --out atlases --overwrite
echo "atlas written to atlases/age-70/ (atlas.nii.gz, dvf.nii.gz, jacobian.nii.gz, preview.png, record.json)"
