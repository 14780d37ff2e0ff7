#!/usr/bin/env bash
# Every GPU measurement the performance targets ask for, in one command on one H100/H200
# (about 8 minutes; each part has its own time limit):
#
#   OUT=/some/dir bash benchmarks/gpu_suite.sh
#
# Needs jax with CUDA, optax, flax, torch (for the torch rows) and, for the sweep part,
# scikit-learn (its digits CSV) and matplotlib. Each part writes its printed table and JSON
# under $OUT as it goes, so a part that runs out of time leaves the others' results intact.
# Record what it measures in benchmarks/RESULTS.md with the card and the date.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${OUT:-benchmarks/results/gpu-$(date -u +%Y%m%d)}
mkdir -p "$out"

part() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  tail -n 40 "$out/$name.txt"
  [ $rc -eq 0 ] || echo "== $name ended with status $rc (124: out of time)"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
} > "$out/device.txt" 2>&1
cat "$out/device.txt"

# Fast path: one Adam step on the GPU layouts, ten steps per program (device time).
part step_time 150 python benchmarks/step_time.py --size gpu --loop 10 --rounds 8 \
  --layouts "one leaf,gpt2-medium-like" --json "$out/step_time.json"
# The 1024-leaf layout on its own: its compilations are the slow part.
part step_time_1024 120 python benchmarks/step_time.py --size gpu --loop 10 --rounds 5 \
  --layouts "1024 leaves" --impls "adam_jax,optax.adam,torch fused" --json "$out/step_time_1024.json"
# Memory-lean moments: 8-bit and bf16 step time against fp32 Adam at 59M params.
part memory_step 60 python benchmarks/memory.py --only step --width 2048 \
  --json "$out/memory_step.json"
# Tuning: the whole sweep command, vectorized against --sequential and a plain optax loop.
if python -c "import sklearn, matplotlib" 2> /dev/null; then
  part sweep_speed 120 python benchmarks/sweep_speed.py --repeats 3
else
  echo "== sweep_speed skipped: install scikit-learn and matplotlib for it"
fi
