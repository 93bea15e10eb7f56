#!/usr/bin/env bash
# GPU check of gdet's inference runtime, for a session on a CUDA machine (H100/H200, torch 2.x, no opencv-contrib):
#   OUT=/path/to/results bash tools/gpu_check.sh
# Writes under $OUT: shared.txt (R-CNN vs shared-feature network stage, both through the runtime), detect.txt
# (stages of gdet detect against torchvision's network), exactness.txt (fp32/fp16/bf16 vs fp32, compiled and
# CUDA-graph variants), classify_*.txt (gdet's runtime vs torchvision eager and torch.compile), env.txt. 2 min 36 s
# on an H200 with CLASSIFY_FP32=0 CLASSIFY_COMPILE=torchvision (measured); every step has its own time limit
# (7 minutes in all), so one slow step cannot eat the others' time. CLASSIFY_FP32=0 skips the fp32 table.
set -u
OUT=${OUT:-gpu_check_out}
. "$(dirname "$0")/gpu_lib.sh"
# 1. Shared-feature vs R-CNN network stage, 2,000 and 500 random proposals, 480x640 image, R-CNN on all of them.
run shared 90 $PY tools/bench.py shared --device cuda --backbones googlenet_tv,googlenet --proposals 2000,500 \
    --rcnn-full --repeats 5
# 2. Detection: 2,000 random proposals per image (no selective search here), GoogLeNet at 224 px, fp16.
run detect 100 $PY tools/bench.py detect --device cuda --source random --images 4 --repeats 3 --backbone googlenet_tv
# 3. Exactness on CUDA: every backbone + a detector, fp32/fp16/bf16 against the original fp32 network.
run exactness 100 $PY -m gdet.runtime.check --device cuda --precisions fp32,fp16,bf16 --compile googlenet_tv \
    --out "$OUT/exactness_table.txt"
# 4. Classification, batch 128 at 224 px: fp16 (torchvision under autocast + channels-last; gdet's runtime eager
#    and compiled; batch-1 latency with a CUDA graph), then fp32.
run classify_fp16 130 $PY tools/bench.py classify --device cuda --precisions fp16 --compile ${CLASSIFY_COMPILE:-all} --repeats 5
[ "${CLASSIFY_FP32:-1}" = 0 ] || run classify_fp32 90 $PY tools/bench.py classify --device cuda --precisions fp32 \
    --compile torchvision --repeats 5
exit $status
