#!/usr/bin/env bash
# The GPU checks in one go, for a machine with a CUDA device:
#   bash bench/gpu_check.sh LOG_DIR [PYTHON]
# 1. the GPU bench (fp32 end to end on 5,011 VOC-sized and 2,505 COCO-sized JPEGs, TF32 and bf16
#    boxes against IEEE fp32's on every image), 2. the `gpu` tests (every command end to end on
#    CUDA), 3. PUL and LOST+CAD training throughput. Logs and JSON go to LOG_DIR (at most 8 files);
#    the exit status is non-zero if any step failed (every step still runs, each under a time limit).
set -u
out="${1:?usage: bash bench/gpu_check.sh LOG_DIR [PYTHON]}"
py="${2:-python}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
{ "$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc; date -u; git rev-parse HEAD 2>/dev/null; } > "$out/machine.txt" 2>&1
run() {  # name, seconds, command...
  local name="$1" limit="$2"; shift 2
  echo "== $name: $*" | tee -a "$out/$name.log"
  local start=$SECONDS
  timeout "$limit" "$@" >> "$out/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc, $((SECONDS - start)) s" | tee -a "$out/$name.log"
  [ $rc -eq 0 ] || status=1
}
run bench_gpu 300 "$py" -m bench --device cuda --precision bf16 --json "$out/bench_gpu.json"
run gpu_tests 240 "$py" -m pytest -m gpu -v -rs -p no:cacheprovider tests/test_gpu.py tests/test_cad.py

# Training throughput on 1,024 VOC-sized images: PUL (batch 64, fp32 and bf16) and LOST+CAD.
work="$(mktemp -d)"
run training 200 "$py" -c "from pathlib import Path; from bench.data import make_voc; make_voc(Path('$work'), 1024)"
for precision in fp32 bf16; do
  run training 200 "$py" -m discovery pul train --backbone random --images "$work/VOCdevkit/VOC2007/JPEGImages" \
    --device cuda --batch-size 64 --epochs 2 --workers 12 --precision "$precision" --no-progress --out "$work/pul-$precision.safetensors"
done
run training 200 "$py" -m eval run --dataset voc07 --root "$work" --backbone random --device cuda --limit 512 \
  --no-progress --out "$work/lost"
run training 200 "$py" -m discovery cad train --run "$work/lost" --base random --device cuda --iterations 40 \
  --batch-size 16 --workers 12 --no-progress --out "$work/cad.safetensors"
rm -rf "$work"
exit $status
