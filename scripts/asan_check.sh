#!/usr/bin/env bash
# Memory safety of the compiled Cython backend, checked with AddressSanitizer
# (and UndefinedBehaviorSanitizer: integer overflow, misaligned or out-of-bounds
# array access, bad shifts, null arguments).
#
#   scripts/asan_check.sh [extra pytest arguments]
#
# 1. builds gru (its Cython extension) with -fsanitize=address,undefined (and
#    -fsanitize-recover=..., so that every error is counted instead of the
#    first one aborting) into a throw-away virtual environment under a
#    temporary directory; the working tree, its build/ folder and the editable
#    install are left alone;
# 2. checks that the extension that gets imported is that build and that it is
#    instrumented (it calls __asan_report_* and __ubsan_handle_*), and that the
#    ASan runtime is live by making it catch a deliberate heap overflow (the canary);
# 3. runs, under LD_PRELOAD=libasan with ASAN_OPTIONS=detect_leaks=0 (CPython
#    keeps memory until exit by design; scripts/leak_check.py measures leaks):
#    the conformance suite on the cython backend (pytest --pyargs gru.testing
#    --gru-backend cython: forward over the whole feature matrix, layouts, the
#    cell, and every gradient), tests/test_cython_backend.py, tests/test_threads.py
#    (eight threads at once), tests/test_bad_input.py (malformed calls, the
#    kernels' own argument checks among them) and tests/test_extreme_numbers.py
#    (NaN, infinities, denormals and huge values through the gate pass). A pytest plugin makes the backend
#    allocate its scratch memory exactly to size on every call (it normally
#    reuses a larger per-thread buffer), so that a write past the workspace
#    lands in ASan's red zone instead of in slack;
# 4. prints the number of AddressSanitizer errors and UBSan reports (kept in
#    the work directory) and exits non-zero when there is any, or when a test
#    fails.
#
# What ASan cannot see: accesses made inside OpenBLAS (scipy's BLAS library is
# not instrumented). The kernel checks every buffer against the sizes it
# derives the BLAS calls' dimensions from (the _expect_*/_check_* helpers in
# gru/backends/cython/_kernels.pyx). valgrind would see into OpenBLAS, but
# valgrind 3.19 stops at the AVX-512 instructions of the default -march=native build.
#
# Environment: PYTHON (default python3), CC (default gcc), ASAN_WORKDIR (default: a new
# mktemp -d directory, removed at the end unless KEEP=1 or an error was found).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
WORK=${ASAN_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/gru-asan.XXXXXX")}
mkdir -p "$WORK"
start=$(date +%s)

LIBASAN=$("$CC" -print-file-name=libasan.so)
if [[ ! -e "$LIBASAN" ]]; then
    echo "asan_check: $CC has no libasan.so (install libasan / gcc's sanitizer runtime)" >&2
    exit 2
fi
LIBASAN=$(readlink -f "$LIBASAN")

echo "== building gru with AddressSanitizer into $WORK/venv"
"$PYTHON" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# An editable install of gru in the base environment puts an import hook first on
# sys.meta_path, which would import the working tree's extension instead of this build.
cat >"$SITE/sitecustomize.py" <<'EOF'
import sys

sys.meta_path[:] = [
    f for f in sys.meta_path
    if not (type(f).__name__.startswith("ScikitBuild") and "gru" in getattr(f, "known_source_files", {"gru": 1}))
]
EOF
FLAGS="-fsanitize=address,undefined -fsanitize-recover=address,undefined -fno-omit-frame-pointer -g"
(
    cd "$ROOT"
    CC="$CC" "$VPY" -m pip install --no-build-isolation --no-deps --quiet --disable-pip-version-check \
        -Cbuild-dir="$WORK/build" \
        -Ccmake.define.CMAKE_C_FLAGS="$FLAGS" \
        -Ccmake.define.CMAKE_MODULE_LINKER_FLAGS="-fsanitize=address,undefined" \
        -Ccmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" \
        .
)

cd "$WORK"  # not the repository root: `python -m` would put the source tree's gru first on sys.path
SO=$("$VPY" -c 'import gru.backends.cython._kernels as k; print(k.__file__)' 2>/dev/null || true)
if [[ -z "$SO" ]]; then
    # importing the instrumented extension without the runtime preloaded fails: that is expected
    SO=$(LD_PRELOAD="$LIBASAN" ASAN_OPTIONS=detect_leaks=0 "$VPY" -c \
        'import gru.backends.cython._kernels as k; print(k.__file__)')
fi
case "$SO" in
    "$WORK"/*) ;;
    *) echo "asan_check: imported $SO, not the ASan build under $WORK" >&2; exit 2 ;;
esac
if command -v objdump >/dev/null; then  # checked memory accesses: calls to __asan_report_* in its code
    REPORTS=$(objdump -d "$SO" | grep -c 'call.*__asan_report' || true)
    what="checked memory accesses (calls to __asan_report_*)"
    UB_CHECKS=$(objdump -d "$SO" | grep -c 'call.*__ubsan_handle' || true)
    what="$what and $UB_CHECKS undefined-behaviour checks (calls to __ubsan_handle_*)"
else
    REPORTS=$(nm -D "$SO" | grep -c '__asan_report' || true)
    what="__asan_report_* functions referenced"
fi
echo "== extension: $SO"
echo "   instrumented: $REPORTS $what"
if [[ "$REPORTS" -eq 0 ]]; then
    echo "asan_check: the extension is not instrumented" >&2
    exit 2
fi

export LD_PRELOAD="$LIBASAN"
LOGS="$WORK/asan-reports"
mkdir -p "$LOGS"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=0:log_path=$LOGS/canary:allocator_may_return_null=1"

echo "== canary: the runtime must report a deliberate heap overflow on a NumPy buffer"
"$VPY" - <<'EOF'
import ctypes

import numpy as np

a = np.zeros(100, np.float64)
ctypes.memset(a.ctypes.data, 0, a.nbytes + 8)  # 8 bytes past the end
EOF
if ! grep -qs "heap-buffer-overflow" "$LOGS"/canary*; then
    echo "asan_check: the canary overflow went unreported: ASan is not active" >&2
    exit 2
fi
echo "   reported (heap-buffer-overflow), as it must be"

cat >"$WORK/asan_exact_scratch.py" <<'EOF'
"""pytest plugin: the cython backend's scratch memory, allocated exactly to size on every call."""

import numpy as np

from gru.backends.cython.backend import CythonBackend

allocations = [0]


def _exact_scratch(self, dtype, *shapes):
    allocations[0] += 1
    return [np.empty(shape, dtype) for shape in shapes]


CythonBackend._scratch = _exact_scratch


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"asan_exact_scratch: {allocations[0]} kernel calls got exact-size scratch memory")
EOF
cat >"$WORK/pytest.ini" <<'EOF'
[pytest]
addopts = -ra -p no:cacheprovider
EOF

echo "== under ASan: conformance suite on the cython backend (forward and gradients), tests/test_cython_backend.py,"
echo "   tests/test_threads.py, tests/test_bad_input.py, tests/test_extreme_numbers.py"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=0:log_path=$LOGS/run:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:log_path=$LOGS/ubsan"
set +e
PYTHONPATH="$WORK" "$VPY" -m pytest -c "$WORK/pytest.ini" -q -p asan_exact_scratch \
    --pyargs gru.testing "$ROOT/tests/test_cython_backend.py" "$ROOT/tests/test_threads.py" \
    "$ROOT/tests/test_bad_input.py" "$ROOT/tests/test_extreme_numbers.py" --gru-backend cython "$@" 2>&1 | tee "$WORK/pytest.log" |
    grep -E "asan_exact_scratch:|passed|failed|error" | tail -n 3
status=${PIPESTATUS[0]}
set -e
unset LD_PRELOAD

errors=$(cat "$LOGS"/run* 2>/dev/null | grep -c "ERROR: AddressSanitizer" || true)
ub=$(cat "$LOGS"/ubsan* 2>/dev/null | grep -c "runtime error:" || true)
summary=$(grep -E "^[0-9]+ (passed|failed)|passed|failed" "$WORK/pytest.log" | tail -n 1)
elapsed=$(($(date +%s) - start))
echo "== result: $errors AddressSanitizer errors, $ub UBSan reports; pytest: $summary (exit $status); ${elapsed}s in all"
if [[ "$errors" -ne 0 || "$ub" -ne 0 ]]; then
    echo "   reports: $LOGS/" >&2
    cat "$LOGS"/run* "$LOGS"/ubsan* 2>/dev/null | grep -A 12 -E "ERROR: AddressSanitizer|runtime error:" | head -n 60 >&2
    exit 1
fi
if [[ "$status" -ne 0 ]]; then
    echo "   pytest log: $WORK/pytest.log" >&2
    exit 1
fi
if [[ "${KEEP:-0}" != 1 && -z "${ASAN_WORKDIR:-}" ]]; then
    rm -rf "$WORK"
fi
