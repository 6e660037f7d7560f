#!/usr/bin/env bash
# Device check on one NVIDIA GPU (H100/H200): under 8 minutes, one JSON.
#
#   benchmarks/device_check.sh [OUT.json]   # default benchmarks/results/device_check_<date>.json
#
# Installs NOTHING from the network. Its only prerequisites, installed once
# where PyPI is reachable (or set DEVICE_CHECK_INSTALL=1 to run this first):
#   pip install -r requirements.txt "jax[cuda12]"
# It first checks that `jax.devices()` shows a GPU and stops with a clear
# message (exit 3) if not.
#
# Parts, each a separate process under `timeout` (one slow part cannot eat
# the budget); each part's exit code, seconds, JSON and log tail go into OUT:
#   bench_<impl>  benchmarks/bench.py --preset=gpu --impl=<impl> (train step +
#                 inference + 256³ sliding window) for impl in auto lax shift fused
#   train         run.py --config=experiments/five_domain.py:smoke (builds its tiny
#                 synthetic data itself; trains, then evaluates on the validation cases)
#   export        run.py --mode=export of that workdir
#   reload        u2net_jax.infer.exported.load + one zero volume (shapes asserted)
#
# CPU dry run (tests/test_bench.py): DEVICE_CHECK_ALLOW_CPU=1 DEVICE_CHECK_PRESET=smoke
# DEVICE_CHECK_IMPLS=lax runs the same flow on CPU. Other knobs:
# DEVICE_CHECK_TIMEOUT_SCALE (multiplies every timeout; default 1),
# DEVICE_CHECK_TRAIN_STEPS (default: the smoke preset's 6), DEVICE_CHECK_DATA_DIR
# (TFDS data_dir; default a fresh temp folder), DEVICE_CHECK_WORKDIR (the smoke
# run's workdir; default a fresh temp folder — one that already holds a finished
# run of as many steps is resumed: it only evaluates, as the tests do to avoid
# training it twice), PYTHON (default .venv/bin/python if present, else python).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUT=${1:-benchmarks/results/device_check_$(date +%F).json}
PRESET=${DEVICE_CHECK_PRESET:-gpu}
IMPLS=${DEVICE_CHECK_IMPLS:-auto lax shift fused}
SCALE=${DEVICE_CHECK_TIMEOUT_SCALE:-1}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
# Seconds per part (4 bench impls × 65 + 100 + 50 + 30 + 20 = 460 s < 8 min).
T_CHECK=$((20 * SCALE)); T_BENCH=$((65 * SCALE)); T_TRAIN=$((100 * SCALE))
T_EXPORT=$((50 * SCALE)); T_RELOAD=$((30 * SCALE))

TMP=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
PARTS=$TMP/parts
mkdir -p "$PARTS" "$(dirname "$OUT")"
WORKDIR=${DEVICE_CHECK_WORKDIR:-$TMP/smoke_work}
DATA_DIR=${DEVICE_CHECK_DATA_DIR:-$TMP/tfds}
T0=$(date +%s)
# Room for the 128³ train step: JAX on GPU preallocates 75 % by default.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}

if [ "${DEVICE_CHECK_INSTALL:-0}" = 1 ]; then
  "$PYTHON" -m pip install -r requirements.txt "jax[cuda12]" || exit 4
fi

# part NAME TIMEOUT CMD...: runs CMD; NAME.rc, NAME.ms, NAME.log in $PARTS.
part() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s%N)
  echo "[device_check] $name (timeout ${limit}s): $*" >&2
  timeout -k 10 "$limit" "$@" > "$PARTS/$name.log" 2>&1
  local rc=$?
  echo "$rc" > "$PARTS/$name.rc"
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$PARTS/$name.ms"
  echo "[device_check] $name: exit $rc, $(cat "$PARTS/$name.ms") ms" >&2
  return $rc
}

# 0. A GPU, or a clear stop.
part devices "$T_CHECK" "$PYTHON" -c '
import json, jax
d = jax.devices()
print(json.dumps({"backend": jax.default_backend(), "jax_version": jax.__version__,
                  "devices": [x.device_kind for x in d]}))' || {
  echo "device_check: cannot import jax or list its devices:" >&2
  tail -20 "$PARTS/devices.log" >&2
  exit 3
}
BACKEND=$("$PYTHON" -c '
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
print(json.loads(lines[-1])["backend"] if lines else "unknown")' "$PARTS/devices.log")
if [ "$BACKEND" != gpu ] && [ "${DEVICE_CHECK_ALLOW_CPU:-0}" != 1 ]; then
  echo "device_check: JAX sees no GPU (backend '$BACKEND': $(tail -1 "$PARTS/devices.log"))." >&2
  echo "Install the CUDA build once, where PyPI is reachable: pip install -r requirements.txt" \
       "\"jax[cuda12]\"; check nvidia-smi. (DEVICE_CHECK_ALLOW_CPU=1 runs it on CPU anyway.)" >&2
  exit 3
fi

# 1. Benchmark preset, one process per depthwise implementation.
for impl in $IMPLS; do
  part "bench_$impl" "$T_BENCH" "$PYTHON" benchmarks/bench.py --preset="$PRESET" \
    --impl="$impl" --out="$PARTS/bench_$impl.json"
done

# 2. Smoke training + evaluation (the final evaluation writes eval/summary.json).
TRAIN_ARGS=()
if [ -n "${DEVICE_CHECK_TRAIN_STEPS:-}" ]; then
  TRAIN_ARGS+=("--config.train.steps=$DEVICE_CHECK_TRAIN_STEPS")
fi
part train "$T_TRAIN" "$PYTHON" run.py --config=experiments/five_domain.py:smoke \
  --workdir="$WORKDIR" --config.data.data_dir="$DATA_DIR" ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}

# 3. Export, then reload with u2net_jax.infer.exported and predict a zero volume.
part export "$T_EXPORT" "$PYTHON" run.py --mode=export --workdir="$WORKDIR"
part reload "$T_RELOAD" "$PYTHON" benchmarks/device_check_collect.py reload \
  --export_dir="$WORKDIR/export" --out="$PARTS/reload.json"

# 4. One JSON.
"$PYTHON" benchmarks/device_check_collect.py collect --parts="$PARTS" --workdir="$WORKDIR" \
  --preset="$PRESET" --impls="$IMPLS" --total_seconds=$(( $(date +%s) - T0 )) --out="$OUT"
rc=$?
echo "[device_check] wrote $OUT (temp files in $TMP)" >&2
exit $rc
