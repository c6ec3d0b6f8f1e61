#!/usr/bin/env bash
# The GPU checks in one call, for a lent GPU machine whose python3 already has jax (CUDA), flax, optax, torch, pytest:
# the environment, the GPU tests (cuDNN path, every Impl path against the naive reference and PyTorch, bf16), then
# the benchmark's default sweep with cuDNN and torch's CUDA LSTM beside lstm_jax. Every step is time-boxed and runs
# even if one before it failed; logs and results go to $OUT (default ./gpu-results).
#
#   bash benchmarks/gpu_check.sh [budget seconds, default 430] [sweep (default) | shapes | bptt]
set -u
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
BUDGET=${1:-430}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}

left() { echo $((BUDGET - SECONDS)); }
step() {  # step NAME SECONDS command...: runs the command with at most SECONDS, or what is left of the budget
  local name=$1 limit=$2
  shift 2
  local remaining
  remaining=$(left)
  ((remaining < limit)) && limit=$remaining
  if ((limit < 20)); then
    echo "== $name: skipped, ${remaining}s left" | tee -a "$OUT/summary.txt"
    return
  fi
  echo "== $name (at most ${limit}s, started at ${SECONDS}s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc after ${SECONDS}s" | tee -a "$OUT/summary.txt"
  tail -n 25 "$OUT/$name.log"
}

{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
  $PY -c "import sys, jax, jaxlib, flax, optax, chex, torch; print(sys.version); print('jax', jax.__version__, \
'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'chex', chex.__version__, \
'torch', torch.__version__, 'cudnn', torch.backends.cudnn.version()); print(jax.devices())"
} 2>&1 | tee "$OUT/environment.log"

PYTEST=($PY -m pytest -q -p no:cacheprovider --no-header -o addopts="-ra --durations=10")
if [[ ${2:-sweep} == sweep ]]; then
  # The benchmark before the tests: its figures are what a lease is for; a failing test is cheap to rerun alone.
  step probe 60 $PY benchmarks/gpu_probe.py
  step bench 240 $PY -m lstm_jax bench --impls lstm_jax:kernel lstm_jax:cudnn flax torch cudnn \
    --cell bf16 --out "$OUT/bench"
  step tests 130 "${PYTEST[@]}" tests/test_cudnn.py tests/test_impls.py tests/test_bench_flops.py
  step tests_bf16 40 "${PYTEST[@]}" tests/test_variants.py -k bf16
  step bench_L2_bi 120 $PY -m lstm_jax bench --layers 2 --bidirectional --seq-lens 64 1024 \
    --impls lstm_jax:kernel lstm_jax:cudnn torch cudnn --out "$OUT/bench"
elif [[ $2 == bptt ]]; then
  # The bptt path's options (benchmarks/gpu_bptt_variants.py) against cuDNN, then the benchmarks with the fastest
  # option found for each batch size, then the tests of the bptt path (every option) on the GPU.
  step variants 100 $PY benchmarks/gpu_bptt_variants.py --out "$OUT"  # 70 s on an H100
  best() { cat "$OUT/best_B$1.env" 2>/dev/null; }
  step bench_B256 50 env $(best 256) $PY -m lstm_jax bench --batch 256 --seq-lens 256 \
    --impls lstm_jax:kernel torch cudnn --cell bf16 --out "$OUT/bench"
  step tests 160 "${PYTEST[@]}" tests/test_impls.py tests/test_variants.py -k "bptt or path or bf16"  # ~150 s
  step bench 200 env $(best 32) $PY -m lstm_jax bench --impls lstm_jax:kernel flax torch cudnn --cell bf16 \
    --out "$OUT/bench"
  mkdir -p "$OUT/bench" && mv "$OUT"/*.log "$OUT"/*.env "$OUT"/*.json "$OUT/bench/" 2>/dev/null
else  # "shapes": the cuDNN path's tests, then the sweep's other shapes
  step tests 70 "${PYTEST[@]}" tests/test_cudnn.py tests/test_impls.py -k "cudnn or unknown"
  step bench_H512 100 $PY -m lstm_jax bench --input 512 --hidden 512 --seq-lens 64 256 1024 \
    --impls lstm_jax:kernel lstm_jax:cudnn torch cudnn --cell bf16 --out "$OUT/bench"
  step bench_L2 70 $PY -m lstm_jax bench --layers 2 --seq-lens 16 256 1024 \
    --impls lstm_jax:kernel torch cudnn --out "$OUT/bench"
  step bench_B256 50 $PY -m lstm_jax bench --batch 256 --seq-lens 256 \
    --impls lstm_jax:kernel lstm_jax:cudnn torch cudnn --out "$OUT/bench"
fi
tar czf "$OUT/bench.tgz" -C "$OUT" bench 2>/dev/null && rm -rf "$OUT/bench"
cat "$OUT/summary.txt"
