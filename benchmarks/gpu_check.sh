#!/usr/bin/env bash
# The GPU check of the CuPy backend, on a fresh GPU machine without network, in about 4 minutes:
#
#   benchmarks/gpu_check.sh OUTDIR
#
# installs this checkout (no build isolation, no dependency downloads: the machine must already
# have numpy, scipy, cython, scikit-build-core, cmake, ninja, cupy, torch, pytest), lists the
# backends, runs the conformance suite on the cupy backend (gradients included) and the GPU tests in
# tests/cupy_backend/, then times the backend against torch.nn.GRU on cuDNN (benchmarks/gpu.py), the
# forward and training (OUTDIR/gpu_train.json). Every step has its own
# time limit and its own log in OUTDIR; OUTDIR/summary.txt lists each step's exit status and
# OUTDIR/gpu.json holds the benchmark's results. Exit status: 0 when every step passed.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# import the installed package (what users get: the compiled extension, the .cu files as package
# data), not the source tree that the current directory would otherwise put first (Python >= 3.11)
export PYTHONSAFEPATH=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-$OUT/cupy-cache}   # compiled kernels, shared by the steps below

status=0
started=$(date +%s)
summary() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the exit status
step() {
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout --kill-after=5 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 124 ] && echo "(stopped after ${limit} s)" >>"$OUT/$name.log"
    summary "$(printf '%-12s exit %-3s %4ss  %s' "$name" "$rc" "$(($(date +%s) - t0))" "$(grep -v "^[[:space:]]*$" "$OUT/$name.log" | tail -n 1)")"
    [ $rc -eq 0 ] || status=1
}

: >"$OUT/summary.txt"
summary "gru GPU check, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 && summary "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"

# limits add up to 1070 s (an H100 took 125-173 s for the forward alone, 232 s with the gradient
# tests and the training benchmark), and 690 s more for the optional SASS and profiles and the
# CPU tests (left out with GRU_GPU_CHECK_SKIP_CPU=1);
# the GPU tests run first (they say fastest whether the kernels work), the CPU-only tests last
# (CI runs those anyway)
step install 90 "$PYTHON" -m pip install --no-build-isolation --no-deps --no-cache-dir .
step backends 20 "$PYTHON" -m gru.cli backends
step gpu-tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/cupy_backend/test_cupy_backend.py -k test_gpu_
step conformance 120 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
# the suite's small layers take the resident kernel in auto: run it on the other paths as well
GRU_CUPY_PATH=persistent step conf-persist 90 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
GRU_CUPY_PATH=fused step conf-fused 90 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
GRU_CUPY_PATH=stepwise step conf-stepwise 90 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
# the resident path's layouts of W_hh ("auto" takes rows up to 64 units of float32 reset-after, chunks above)
GRU_CUPY_RESIDENT_LAYOUT=chunked step conf-chunked 90 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
GRU_CUPY_RESIDENT_LAYOUT=rows step conf-rows 90 "$PYTHON" -m pytest -q -p no:cacheprovider --pyargs gru.testing --gru-backend cupy
step benchmark 180 "$PYTHON" benchmarks/gpu.py --json "$OUT/gpu.json" --budget 40 ${GRU_GPU_SWEEP:+--sweep} ${GRU_GPU_CROSSOVER:+--crossover} ${GRU_GPU_RESIDENT:+--resident}
# training: forward (train=True) + backward against torch.nn.GRU's autograd on cuDNN, gradients checked first
step bench-train 120 "$PYTHON" benchmarks/gpu.py --train --json "$OUT/gpu_train.json" --budget 60
# GRU_GPU_PROFILE=1: Nsight Compute on one launch of each benchmark shape's kernel (after warm-up)
if [ -n "${GRU_GPU_PROFILE:-}" ] && command -v ncu >/dev/null; then
    for case in 128,128,1,1000:resident 1024,1024,1,1500:persistent 2816,2816,1,375:persistent \
        2048,2048,32,375:fused 512,512,256,100:fused; do
        shape=${case%:*} path=${case#*:}
        skip=$("$PYTHON" benchmarks/gpu_profile.py "$shape" --path "$path" --print-skip)
        step "ncu-${shape//,/x}-$path" 90 ncu --section SpeedOfLight --section WarpStateStats \
            --section SourceCounters -k regex:gru_ -s "$skip" -c 1 "$PYTHON" benchmarks/gpu_profile.py "$shape" --path "$path"
    done
fi
# GRU_GPU_SASS=1: the machine code of every kernel instance (nvcc + cuobjdump: no GPU work, but
# about 40 s of the machine's time), for reading offline
[ -n "${GRU_GPU_SASS:-}" ] && command -v cuobjdump >/dev/null && step sass 120 "$PYTHON" benchmarks/gpu_sass.py "$OUT/sass.txt"
# GRU_GPU_CHECK_SKIP_CPU=1 leaves them out where GPU time is short
[ -n "${GRU_GPU_CHECK_SKIP_CPU:-}" ] ||
    step cpu-tests 120 "$PYTHON" -m pytest -q -p no:cacheprovider -rs tests/cupy_backend -k "not test_gpu_"
cp "$OUT/benchmark.log" "$OUT/benchmark.txt" 2>/dev/null

summary "total $(($(date +%s) - started)) s, status $status"
exit $status
