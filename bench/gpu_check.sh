#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA device:
#   bash bench/gpu_check.sh LOG_DIR [PYTHON]
# 1. the `gpu` tests (every command end to end on CUDA), 2. the GPU bench in fp32 with bf16 boxes
# compared, 3. the CPU-vs-reference quick bench on the same machine. Logs and JSON go to LOG_DIR;
# the exit status is non-zero if any step failed (every step still runs).
set -u
out="${1:?usage: bash bench/gpu_check.sh LOG_DIR [PYTHON]}"
py="${2:-python}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
{ "$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc; date -u; git rev-parse HEAD 2>/dev/null; } > "$out/machine.txt" 2>&1
run() {  # name, command...
  local name="$1"; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s, log $out/$name.log"
  [ $rc -eq 0 ] || status=1
}
run gpu_tests "$py" -m pytest -m gpu -v -rs tests/test_gpu.py
run bench_gpu "$py" -m bench --device cuda --precision bf16 --json "$out/bench_gpu.json"
run bench_cpu_quick "$py" -m bench --quick --json "$out/bench_cpu_quick.json"
exit $status
