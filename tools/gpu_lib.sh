# Sourced by tools/gpu_check.sh and tools/gpu_shared_check.sh after they set OUT: makes $OUT, sets PY (python3
# unless PYTHON says otherwise) and PYTHONPATH, writes $OUT/env.txt (GPU, driver, library versions) and defines
# `run NAME TIMEOUT CMD...`: the command's output goes to $OUT/NAME.txt with its time and exit code appended, and
# a failed or timed-out step sets status=1 (the script's exit code) without stopping the steps after it.
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
status=0
run() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "# exit code $rc after $(( $(date +%s) - t0 )) s: $*" >> "$OUT/$name.txt"
  echo "$name: exit $rc ($(( $(date +%s) - t0 )) s)"
  [ $rc -eq 0 ] || status=1
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY - <<'PYEOF'
import torch, torchvision
try:
    import triton
    tri = triton.__version__
except ImportError:
    tri = "missing"
print("torch", torch.__version__, "torchvision", torchvision.__version__, "triton", tri, "cuda", torch.version.cuda,
      "cudnn", torch.backends.cudnn.version())
PYEOF
} > "$OUT/env.txt" 2>&1
