#!/usr/bin/env bash
# GPU check of shared-feature detection, for a session on a CUDA machine (H100/H200, torch 2.x, no opencv-contrib):
#   OUT=/path/to/results bash tools/gpu_shared_check.sh
# Writes under $OUT: env.txt; tests.txt (the NHWC RoIAlign kernel against torchvision's roi_align on CUDA, shared
# mode with CUDA graphs against without); roi_align.txt (the kernel's tiles against torchvision's kernel, 2,000
# regions from an 832 x 38 x 50 fp16 map to 14 x 14); shared_*.txt (`gdet bench shared`: R-CNN vs shared network
# stage per image, 2,000 random proposals, eager / CUDA graphs / compiled + CUDA graphs / the stride-8 cut). Every
# step has its own time limit (8 minutes in all). ROI_ALIGN=0 skips the tile table (30 s).
set -u
OUT=${OUT:-gpu_shared_check_out}
. "$(dirname "$0")/gpu_lib.sh"
run tests 150 $PY -m pytest -q -p no:cacheprovider tests/test_roi_align.py
[ "${ROI_ALIGN:-1}" = 0 ] || run roi_align 60 $PY - <<'EOF'
import torch
from torchvision.ops import roi_align
from gdet.detection.roi_align import roi_align_nhwc
from gdet.benchmarks.shared_speed import random_boxes

def ms(fn, reps=50):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t = [torch.cuda.Event(enable_timing=True) for _ in range(2 * reps)]
    for i in range(reps):
        t[2 * i].record(); fn(); t[2 * i + 1].record()
    torch.cuda.synchronize()
    return sorted(a.elapsed_time(b) for a, b in zip(t[::2], t[1::2]))[reps // 2]

torch.manual_seed(0)
feat = torch.randn(1, 832, 38, 50, device="cuda").half().contiguous(memory_format=torch.channels_last)
rois = random_boxes(2000, 800, 600).cuda()
ref = roi_align(feat.float(), [rois], (14, 14), 1 / 16, 1, True)
def tv_fp16():
    return roi_align(feat.contiguous(), [rois.half()], (14, 14), 1 / 16, 1, True)

def tv_exact():  # what shared mode runs without the kernel
    out = roi_align(feat.float(), [rois], (14, 14), 1 / 16, 1, True)
    return out.half().contiguous(memory_format=torch.channels_last)

rows = [("torchvision roi_align, fp16 NCHW map", tv_fp16),
        ("torchvision, fp32 copy -> fp16 NHWC (exact path)", tv_exact),
        ("nhwc kernel, autotuned tile (the default)", lambda: roi_align_nhwc(feat, rois, 14, 1 / 16, 1))]
for bb in (8, 16, 32):
    for bc in (64, 128, 256):
        for nw in (2, 4, 8):
            rows.append((f"nhwc kernel, bins {bb} x channels {bc}, {nw} warps",
                         lambda bb=bb, bc=bc, nw=nw: roi_align_nhwc(feat, rois, 14, 1 / 16, 1, block_bins=bb,
                                                                    block_channels=bc, num_warps=nw)))
base = None
for name, fn in rows:
    out = fn()
    err = float((out.float() - ref).norm() / ref.norm())
    t = ms(fn)
    base = base or t
    print(f"{name:<52} {t:8.3f} ms  {base / t:6.1f}x  rel.err {err:.1e}")
EOF
B="$PY tools/bench.py shared --device cuda --proposals 2000 --rcnn-full --repeats 10 --chunk 2000"
run shared_eager 90 $B --backbones googlenet_tv,googlenet
run shared_graphs 90 $B --backbones googlenet_tv,googlenet --cuda-graphs
run shared_graphs_chunk256 60 $B --backbones googlenet_tv --cuda-graphs --chunk 256
run shared_3b 60 $B --backbones googlenet_tv --cuda-graphs --stage inception3b
run shared_compiled 180 $B --backbones googlenet_tv,googlenet --compile --cuda-graphs
exit $status
