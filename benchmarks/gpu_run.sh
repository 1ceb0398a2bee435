#!/usr/bin/env bash
# The whole GPU performance check in one command: < 8 minutes on one H100/H200, no network.
#
#   benchmarks/gpu_run.sh [OUT_DIR]          # default OUT_DIR: benchmarks/results
#
# Writes, with DEV the device's name (e.g. nvidia_h200):
#   OUT_DIR/table8_DEV_bf16.{json,md}   Table 8 in bfloat16: every configuration at batch 1
#                                       (latency) and 256 (throughput), training images/s of
#                                       U-Net DenseNet-121 at batch 256
#   OUT_DIR/table8_DEV_fp32.{json,md}   the same in float32
#   OUT_DIR/paper2_grid_DEV.{json,md}   paper 2's grid, if benchmarks/paper2_grid.py exists
#                                       (called with --dtype bfloat16 --json F --markdown F
#                                       --force)
#   OUT_DIR/gpu_run_DEV.md              the targets met or missed, and the commands
#   OUT_DIR/gpu_run_DEV.log             everything the steps printed
#
# Time: each step runs under its own limit (seconds: T8_BF16_S, T8_FP32_S, GRID_S; defaults
# 210, 160, 60; the tiny mode's 1800, 1800, 60). table8.py rewrites its reports after every configuration, so a step stopped
# at its limit keeps what it measured and the summary says how far it got.
#
# No network there: Python packages the machine lacks travel as wheels in .whl/ (see
# benchmarks/gpu_wheels.sh, run here beforehand); they are installed into a private folder.
#
# QATACOV_GPU_RUN_TINY=1: a dry run on any CPU (table8.py --dry-run: a toy U-Net DenseNet at
# 32x32, batch 2, one repeat, training timed in float32 only; paper2_grid.py --help; a few
# minutes of CPU, mostly XLA compiling). It checks
# that every step, report and file still works (tests/test_gpu_run.py) and measures nothing.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-python3}
OUT_DIR=${1:-benchmarks/results}
TINY=${QATACOV_GPU_RUN_TINY:-0}
mkdir -p "$OUT_DIR" || { echo "gpu_run.sh: cannot create $OUT_DIR" >&2; exit 2; }

if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=${TMPDIR:-/tmp}/qatacov_gpu_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || { echo "gpu_run.sh: installing .whl/*.whl failed" >&2; exit 2; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
if [ "$TINY" != 1 ]; then
  # qatacov_jax's XLA defaults tune XLA:CPU only; off here, so a jaxlib newer than ours that
  # no longer knows one of them cannot abort the run (XLA refuses unknown flags).
  export QATACOV_XLA_DEFAULTS=${QATACOV_XLA_DEFAULTS:-0}
fi
# A rerun on the same machine loads compiled programs instead of compiling them again.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/qatacov_gpu_xla_cache}

# Fail early, in one line, if a package is missing (rather than minutes into the run).
if ! DEV=$("$PY" -c "from qatacov_jax.benchmarking.gpu_run import device_slug; print(device_slug())"); then
  echo "gpu_run.sh: cannot import the project or start JAX (missing wheels? see" \
    "benchmarks/gpu_wheels.sh)" >&2
  exit 2
fi
LOG="$OUT_DIR/gpu_run_$DEV.log"
: >"$LOG"

if [ "$TINY" = 1 ]; then
  SIZES=(--image-size 32 --batch-sizes 2 --repeats 1 --train-batch-size 2 --train-repeats 1)
  CONFIGS=(--dry-run --configs unet:densenet121:trainable)
  # A dry run checks the script, not the clock: CPU compiles on a busy machine take minutes.
  T8_BF16_S=${T8_BF16_S:-1800} T8_FP32_S=${T8_FP32_S:-1800}
else
  SIZES=(--image-size 224 --batch-sizes 1 256 --repeats 20 --train-batch-size 256 --train-repeats 10)
  CONFIGS=()
fi

STEPS=()
step() {  # step NAME LIMIT_S COMMAND...: runs it under its limit, logs it, records its status
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
  STEPS+=("$name	$rc	$((SECONDS - t0))	$*")
}

for dtype in bfloat16 float32; do
  short=$([ "$dtype" = bfloat16 ] && echo bf16 || echo fp32)
  limit=$([ "$dtype" = bfloat16 ] && echo "${T8_BF16_S:-210}" || echo "${T8_FP32_S:-160}")
  TRAIN=(--train-configs unet:densenet121:trainable)
  # The dry run compiles one training step only (float32's): on a CPU each costs minutes.
  if [ "$TINY" = 1 ] && [ "$dtype" = bfloat16 ]; then TRAIN=(--train-configs); fi
  step "table8_$short" "$limit" "$PY" benchmarks/table8.py --dtype "$dtype" "${SIZES[@]}" \
    "${CONFIGS[@]}" "${TRAIN[@]}" --e2e-images 0 --force \
    --json "$OUT_DIR/table8_${DEV}_$short.json" --markdown "$OUT_DIR/table8_${DEV}_$short.md"
done

if [ -f benchmarks/paper2_grid.py ]; then
  if [ "$TINY" = 1 ]; then
    # Counts of one pair (smp built with random weights, ours shape-only): seconds.
    step paper2_grid 120 "$PY" benchmarks/paper2_grid.py --params-only --pairs fpn:resnet18 \
      --json "$OUT_DIR/paper2_grid_$DEV.json" --markdown "$OUT_DIR/paper2_grid_$DEV.md"
  else
    # float32 at paper 2's 256x256, ours beside smp's PyTorch (on CUDA when the machine's
    # torch has it; a CPU-only torch makes this step slow and its time limit ends it).
    step paper2_grid "${GRID_S:-60}" "$PY" benchmarks/paper2_grid.py --size 256 --batch 8 \
      --repeats 5 --json "$OUT_DIR/paper2_grid_$DEV.json" --markdown "$OUT_DIR/paper2_grid_$DEV.md"
  fi
else
  echo "== paper2_grid: benchmarks/paper2_grid.py does not exist yet; skipped" | tee -a "$LOG"
fi

printf '%s\n' "${STEPS[@]}" >"$OUT_DIR/.gpu_run_steps_$DEV.tsv"
"$PY" -m qatacov_jax.benchmarking.gpu_run summarize "$OUT_DIR" "$DEV" \
  "$OUT_DIR/.gpu_run_steps_$DEV.tsv" $([ "$TINY" = 1 ] && echo --dry-run)
rc=$?
rm -f "$OUT_DIR/.gpu_run_steps_$DEV.tsv"
exit $rc
