#!/usr/bin/env bash
# fp16 parity and throughput of a bundle on a machine with an NVIDIA GPU, within 5 minutes.
#
# Usage: bench/gpu_check.sh BUNDLE_DIR [WHEEL_DIR] [DATA.jsonl]
#   BUNDLE_DIR  a bundle exported with `rbr export --fp16` (fp32 works too)
#   WHEEL_DIR   wheels carried with the tree: onnxruntime-gpu with the CUDA 13 and cuDNN 9
#               runtime wheels it loads (pip download "onnxruntime-gpu[cuda,cudnn]"), tokenizers,
#               numpy, pyyaml and their dependencies (default: wheels/); nothing is downloaded
# The runtime needs no torch, so the check installs only the runtime's dependencies.
set -euo pipefail

bundle=${1:?usage: bench/gpu_check.sh BUNDLE_DIR [WHEEL_DIR] [DATA.jsonl]}
wheels=${2:-wheels}
data=${3:-}
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-index --find-links "$wheels" "onnxruntime-gpu[cuda,cudnn]" tokenizers numpy pyyaml

args=("$bundle")
if [[ -n "$data" ]]; then
  args+=(--data "$data")
fi
PYTHONPATH=. timeout 270 "$venv/bin/python" -m bench.gpu_check "${args[@]}"
