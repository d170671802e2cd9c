#!/usr/bin/env bash
# The CUDA paths of r2 in one short run on a GPU machine: about 6 minutes on one H200.
#
#   1. the machine: GPU, torch, transformers;
#   2. the test suite there (the CUDA test included: fp16 autocast of the model vs the CPU);
#   3. `r2 demo --device cuda`: extraction with the tiny CLIP on the GPU, training with fp16
#      autocast + GradScaler, prediction and scores (compare with the CPU table in README.md);
#   4. `r2 fit` on the demo's cache with bf16 autocast (the demo trains with fp16);
#   5. `r2 extract` with a ViT-B/32-sized random CLIP on the GPU, fp32 vs fp16 vs bf16: clips/s
#      and the largest difference of the stored features from fp32's;
#   6. bench/train_step.py --device cuda at QVHighlights' shapes (batch 8 x 75 clips).
#
# Logs go to $OUT (the device tool's folder that comes back) or /tmp/r2-device; the rest to
# /tmp/r2-device-work. On a machine without PyAV (the device tool's image has none), carry its
# wheel: once, where pip reaches the registry,
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl av==18.1.0
# and run with `.whl` carried: bash bench/device_check.sh
# R2_DEVICE=cpu R2_CHECK_TESTS=0 runs the same steps on the CPU (a check of this script; slow).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/r2-device}"        # logs (what comes back)
work=/tmp/r2-device-work             # the demo folder, the caches, the model
mkdir -p "$out" "$work"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
py=python3
device="${R2_DEVICE:-cuda}"
step() { echo; echo "=== $* ($(date +%T))"; }

step "setup"
if ! $py -c "import av" 2>/dev/null; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/av-*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
$py -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir -e . || exit 1  # editable: the tests import r2 from here
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$py -c "import torch, transformers, av, h5py; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
'| transformers', transformers.__version__, '| av', av.__version__, '| h5py', h5py.__version__)"

if [ "${R2_CHECK_TESTS:-1}" != 0 ]; then
    step "tests (8 processes where pytest-xdist is there)"
    xdist=$($py -c "import xdist" 2>/dev/null && echo "-n 8" || true)
    # shellcheck disable=SC2086
    timeout 300 $py -m pytest -q -p no:cacheprovider $xdist -rs 2>&1 | tee "$out/tests.log" | tail -15
fi

step "r2 demo --device $device"
timeout 240 r2 demo --device "$device" --out "$work/demo" 2>&1 | tee "$out/demo.log" | tail -30

step "r2 fit on the demo's cache with bf16 autocast ($device)"
amp_field=amp; [ "$device" = cpu ] && amp_field=cpu_amp  # the CPU's own field: r2 fit --set cpu_amp=bf16
rm -rf "$work/fit-bf16"
timeout 120 r2 fit --dataset custom --cache "$work/demo/cache" --train "$work/demo/annotations/train.jsonl" \
    --val "$work/demo/annotations/val.jsonl" --run-dir "$work/fit-bf16" --config "$work/demo/fit_settings.json" \
    --seed 0 --device "$device" --set "$amp_field=bf16" 2>&1 | tr '\r' '\n' | grep -v "^fit:" | tail -5
$py -c "import json, sys; b = json.load(open(sys.argv[1])); print('bf16 run, best epoch', b['epoch'], {k: v for k, v in b['metrics']['brief'].items() if k.startswith(('MR-full-R1', 'MR-full-mAP', 'HL-min-VeryGood'))})" "$work/fit-bf16/best.json"

step "r2 extract, ViT-B/32-sized random CLIP on $device: fp32 / fp16 / bf16"
r2 make-tiny-clip "$work/vitb32" --width 768 --layers 12 --heads 12 --overwrite >/dev/null
for precision in fp32 fp16 bf16; do
    start=$(date +%s.%N)
    timeout 180 r2 extract "$work/demo/videos" --annotations "$work/demo/annotations/val.jsonl" --model "$work/vitb32" \
        --out "$work/cache-$precision" --device "$device" --precision "$precision" --batch-size 256 --no-progress \
        2>&1 | tail -3
    $py -c "import sys, time; print(f'$precision: {time.time() - float(sys.argv[1]):.1f} s in all (process start and model load included)')" "$start"
done
(cd "$work" && $py - . <<'EOF'
import sys
import numpy as np
from r2.cache import FeatureCache

work = sys.argv[1]
ref = FeatureCache.open(f"{work}/cache-fp32")
for precision in ("fp16", "bf16"):
    low = FeatureCache.open(f"{work}/cache-{precision}")
    videos = [vid for vid in ref.video_ids()[:20] if low.has_video(vid)]
    if not videos:
        print(f"{precision}: no video extracted (the run above stopped early), nothing to compare")
        continue
    worst = 0.0
    for vid in videos:
        a, b = ref.load_video(vid), low.load_video(vid)  # (T, K, N, D) float32
        worst = max(worst, float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)))
    print(f"{precision}: largest difference from fp32 over {len(videos)} videos, relative to the largest value: {worst:.2e}")
EOF
)

step "bench/train_step.py --device $device --batch 8 --clips 75"
[ "$device" = cpu ] && echo "(not on the CPU: README.md has its figures)" || timeout 240 $py bench/train_step.py --device "$device" --batch 8 --clips 75 --steps 5 2>&1 | tee "$out/train_step.log"
step "done"
