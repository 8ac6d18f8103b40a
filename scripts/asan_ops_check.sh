#!/bin/sh
# Build libonnxq_ops.so with AddressSanitizer and run the op's correctness and fuzz tests
# against it. Exits non-zero on a build failure, a test failure or any ASan report.
#
#   scripts/asan_ops_check.sh [BUILD_DIR]        (default: build/asan)
#
# Environment: PYTHON (default: .venv/bin/python, else python3), ONNXQ_SANITIZE (default:
# address; e.g. address,undefined), JOBS (default: nproc), ONNXRUNTIME_INCLUDE_DIR (as for
# the normal build; else the system headers or the cached/fetched .deps/onnxruntime-headers).
# Python is not instrumented, so the ASan runtime is LD_PRELOADed into it; leak checking is
# off (the interpreter and ORT keep memory to exit on purpose).
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$repo/build/asan}
case $build in /*) ;; *) build=$PWD/$build ;; esac
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then PYTHON=$repo/.venv/bin/python; else PYTHON=python3; fi
fi
sanitize=${ONNXQ_SANITIZE:-address}
jobs=${JOBS:-$(nproc 2>/dev/null || echo 2)}
cxx=${CXX:-c++}

asan_rt=$("$cxx" -print-file-name=libasan.so)
# libstdc++ is preloaded too: python does not link it, and ASan's __cxa_throw interceptor
# must find it at startup (else "CHECK failed: ... real___cxa_throw" on the first C++ throw)
stdcxx_rt=$("$cxx" -print-file-name=libstdc++.so.6)
if [ ! -f "$asan_rt" ]; then
    echo "asan_ops_check: $cxx has no libasan.so (install the compiler's ASan runtime, e.g. libasan8)" >&2
    exit 2
fi

gen=""
command -v ninja >/dev/null 2>&1 && gen="-G Ninja"
mkdir -p "$build"
echo "asan_ops_check: configure + build $build (-fsanitize=$sanitize)" >&2
# shellcheck disable=SC2086
cmake -S "$repo/ops" -B "$build" $gen -DONNXQ_SANITIZE="$sanitize" -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log" >&2; exit 3; }
cmake --build "$build" --target onnxq_ops --parallel "$jobs" >"$build/build.log" 2>&1 ||
    { tail -n 60 "$build/build.log" >&2; exit 3; }
lib=$build/libonnxq_ops.so
[ -f "$lib" ] || { echo "asan_ops_check: $lib was not built (ORT headers missing? see $build/configure.log)" >&2; exit 3; }

nm -D "$lib" 2>/dev/null | grep -q __asan_report ||
    { echo "asan_ops_check: $lib is not instrumented (stale build dir? remove $build)" >&2; exit 3; }

log=$build/pytest.log
echo "asan_ops_check: tests against $lib (log: $log)" >&2
cd "$repo"
set +e
LD_PRELOAD="$asan_rt $stdcxx_rt${LD_PRELOAD:+ $LD_PRELOAD}" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:print_summary=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
"$PYTHON" - "$lib" >"$log" 2>&1 <<'PYEOF'
import sys
from pathlib import Path

import onnxq.runtime as runtime
import pytest

lib = Path(sys.argv[1])
runtime.library_path = lambda device="cpu": lib  # the ops_lib fixture asks onnxq.runtime
sys.exit(pytest.main([
    "-q", "-p", "no:cacheprovider", "-k", "not crash_is_reported",
    "tests/ops/test_matmul_block_int4.py", "tests/ops/test_fuzz_matmul_block_int4.py",
]))
PYEOF
rc=$?
set -e
tail -n 40 "$log"
if grep -q "AddressSanitizer\|runtime error:\|UndefinedBehaviorSanitizer" "$log"; then
    echo "asan_ops_check: sanitizer report (see $log)" >&2
    exit 1
fi
[ "$rc" -eq 0 ] || { echo "asan_ops_check: tests failed (exit $rc)" >&2; exit 1; }
echo "asan_ops_check: OK, no sanitizer report" >&2
