#!/usr/bin/env bash
# Training-input check on one CUDA GPU (H100/H200, 16 cores, no network): generate a few thousand 256-px JPEG
# crops, run the batched-input tests (nvJPEG path included) and time the per-image CPU loader against the batched
# device loader with googlenet_tv, bf16, channels-last, batch 256. Tables and logs go to $OUT (default
# ./gpu_loader_out). Usage: OUT=/some/dir bash tools/gpu_loader_check.sh   (about 6-7 minutes; EXTRA=0 skips the
# per-stage timing and the 4-worker and resize-loop runs: about 3 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_loader_out}
PY=${PYTHON:-python}
DATA=${DATA:-/tmp/gdet_loader_data}
SCENES=${SCENES:-800}         # about 5 crops per scene: ~4,000 training images
EXTRA=${EXTRA:-1}
CORES=$(nproc)
mkdir -p "$OUT"
export PYTHONPATH=$PWD GDET_NO_PROGRESS=1
# tools/bench.py's runner (one-line errors), whether or not bench.py lists the loader benchmark yet
BENCH=("$PY" -c 'from gdet.benchmarks.loader import main; from gdet.cli import run_guarded; run_guarded(main.main, standalone_mode=True)')

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; echo "cores: $CORES"
  "$PY" -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ ! -d "$DATA/train" ]; then
  t0=$(date +%s)
  timeout 420 "$PY" -m gdet.cli data synth --task classify --out "$DATA" --images "$SCENES" --size 500x375 \
    --crop-size 256 --val-fraction 0 --workers "$CORES" > "$OUT/synth.txt" 2>&1 || echo "synth failed (see synth.txt)"
  echo "generated $(find "$DATA/train" -name '*.jpg' | wc -l) JPEGs in $(( $(date +%s) - t0 )) s" | tee -a "$OUT/synth.txt"
fi

# Unit tests, including the CUDA decode/augment comparison that is skipped on CPU-only machines.
timeout 300 "$PY" -m pytest -q -rs tests/test_gpu_input.py > "$OUT/tests.txt" 2>&1; echo "tests rc=$?" >> "$OUT/tests.txt"
tail -3 "$OUT/tests.txt"

# The prefetch thread (own CUDA stream) must give exactly the batches of the synchronous path.
timeout 180 "$PY" - "$DATA/train" > "$OUT/prefetch_check.txt" 2>&1 <<'EOF'
import sys, torch
from gdet.data.folder import read_image_folder
from gdet.classification.gpu_input import BatchTrainAugment, build_device_loader
paths, labels, _ = read_image_folder(sys.argv[1])
paths, labels = paths[:1024], labels[:1024]
runs = []
for prefetch in (0, 2):
    ld = build_device_loader(paths, labels, BatchTrainAugment(224), batch_size=256, device="cuda", num_workers=8,
                             seed=0, channels_last=True, prefetch=prefetch)
    runs.append([(x.cpu(), y.cpu()) for x, y in ld])
    print("prefetch", prefetch, "decoded:", ld.stats)
same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(*runs))
print("prefetch=2 equals prefetch=0:", same, "batches:", len(runs[0]))
EOF
cat "$OUT/prefetch_check.txt"

# Where the batched path's time goes, per batch of 256: nvJPEG decode, CPU decode (one thread), parameter draw,
# crop/resize + colour on the GPU (both resize methods).
[ "$EXTRA" = 0 ] || timeout 180 "$PY" - "$DATA/train" > "$OUT/stages.txt" 2>&1 <<'EOF'
import sys, time, torch
from gdet.data.folder import read_image_folder
from gdet.classification.gpu_input import BatchTrainAugment, EncodedImageDataset, collate_encoded, decode_batch, epoch_generator
paths, labels, _ = read_image_folder(sys.argv[1])
ds = EncodedImageDataset(paths[:768], labels[:768])
batches = [collate_encoded([ds[i] for i in range(j, min(j + 256, len(ds)))]) for j in range(0, len(ds), 256)]
aug, g, dev = BatchTrainAugment(224), epoch_generator(0, 0), torch.device("cuda")
def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); r = fn(); torch.cuda.synchronize()
    return r, time.perf_counter() - t
for rep in range(3):  # the first pass warms nvJPEG and the allocator; the last one is reported
    tot = {"nvjpeg decode": 0.0, "cpu decode (1 thread)": 0.0, "sample": 0.0, "augment (matrix resize)": 0.0,
           "augment (per-image loop)": 0.0}
    n = 0
    for b in batches:
        imgs, t = timed(lambda: decode_batch(b.files(), dev, b.paths, b.orientations)); tot["nvjpeg decode"] += t
        tot["cpu decode (1 thread)"] += timed(lambda: decode_batch(b.files(), "cpu", b.paths, b.orientations))[1]
        p, t = timed(lambda: aug.sample([tuple(im.shape[-2:]) for im in imgs], g)); tot["sample"] += t
        tot["augment (matrix resize)"] += timed(lambda: aug.apply(imgs, p, method="matrix"))[1]
        tot["augment (per-image loop)"] += timed(lambda: aug.apply(imgs, p, method="loop"))[1]
        n += len(b.paths)
for k, t in tot.items():
    print(f"{k:<24} {1000 * t / len(batches):8.2f} ms/batch  {n / t:10.0f} img/s")
EOF
[ "$EXTRA" = 0 ] || cat "$OUT/stages.txt"

# The timed comparison: all cores as workers, then 4 workers (a CPU-starved host).
COMMON=(--data "$DATA" --device cuda --backbone googlenet_tv --precision bf16 --channels-last --batch 256 --size 224
        --steps 30 --warmup 5 --repeats 2)
timeout 240 "${BENCH[@]}" "${COMMON[@]}" --workers "$CORES" 2>&1 | tee "$OUT/loader_bench_w$CORES.txt"
[ "$EXTRA" = 0 ] || timeout 200 "${BENCH[@]}" "${COMMON[@]}" --workers 4 2>&1 | tee "$OUT/loader_bench_w4.txt"
# The batched path alone with the per-image resize loop instead of the resampling matrices.
[ "$EXTRA" = 0 ] || timeout 150 "${BENCH[@]}" "${COMMON[@]}" --workers "$CORES" --paths gpu --resize loop 2>&1 \
  | tee "$OUT/loader_bench_w${CORES}_loop.txt"
echo "done: $(ls "$OUT")"
