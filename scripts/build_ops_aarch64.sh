#!/usr/bin/env bash
# Cross-build the onnxq custom-op library for Linux/AArch64 and test its kernels under
# qemu-user, on an x86-64 Debian machine.
#
#   scripts/build_ops_aarch64.sh [--kernels-only] [--check-tools]
#
# 1. libonnxq_ops.so for aarch64: CMake with ops/cmake/toolchain-aarch64.cmake (Debian's
#    aarch64-linux-gnu-g++). The ONNX Runtime C/C++ headers are found as for the native
#    build (ONNXRUNTIME_INCLUDE_DIR, or fetched from Debian's libonnxruntime-dev into
#    .deps/); they are architecture-independent. The result must be an AArch64 ELF that
#    exports only RegisterCustomOps. (The CUDA library is not part of this build.)
# 2. The CPU kernels (ops/src/kernel_scalar.cc + the NEON ops/src/kernel_neon.cc) linked
#    into a standalone checker (scripts/aarch64/kernel_check.cc, no ORT needed), run with
#    `qemu-aarch64 -L /usr/aarch64-linux-gnu` on cases written by numpy
#    (scripts/aarch64/make_cases.py): every kernel against the numpy reference, the NEON
#    int8 path bit for bit against the scalar one, half<->float on all 65536 values.
#
# Needs: apt-get install g++-aarch64-linux-gnu qemu-user cmake (Debian 12 has them).
# --check-tools: only report whether the tools are there (exit 3 when not).
# --kernels-only: skip step 1 (no ORT headers needed).
# Outputs under build/aarch64/ (override with ONNXQ_AARCH64_BUILD). Exit status 0 when
# everything built and every check passed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${ONNXQ_AARCH64_BUILD:-$repo/build/aarch64}
cross=${ONNXQ_CROSS_PREFIX:-aarch64-linux-gnu-}
sysroot=${ONNXQ_AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

kernels_only=0
check_tools=0
for arg in "$@"; do
    case "$arg" in
        --kernels-only) kernels_only=1 ;;
        --check-tools) check_tools=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "build_ops_aarch64: unknown option $arg" >&2; exit 2 ;;
    esac
done

missing=()
for tool in "${cross}g++" qemu-aarch64 cmake; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ -d "$sysroot" ] || missing+=("$sysroot (the cross C library)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "build_ops_aarch64: missing ${missing[*]}; install with: apt-get install g++-aarch64-linux-gnu qemu-user cmake" >&2
    exit 3
fi
if [ "$check_tools" = 1 ]; then
    echo "build_ops_aarch64: tools present ($("${cross}g++" -dumpfullversion), $(qemu-aarch64 --version | head -n 1))"
    exit 0
fi
mkdir -p "$build"

# -- 1. the op library ------------------------------------------------------------------------
if [ "$kernels_only" = 0 ]; then
    echo "== cross-building libonnxq_ops.so for aarch64 ($build/lib)"
    cmake -S "$repo/ops" -B "$build/lib" \
        -DCMAKE_TOOLCHAIN_FILE="$repo/ops/cmake/toolchain-aarch64.cmake" \
        -DONNXQ_CROSS_PREFIX="$cross" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND >"$build/lib-configure.log" 2>&1 \
        || { tail -n 20 "$build/lib-configure.log" >&2; echo "build_ops_aarch64: CMake configure failed" >&2; exit 1; }
    if grep -q "status=missing" "$build/lib/build_info.txt" 2>/dev/null; then
        grep "reason=" "$build/lib/build_info.txt" >&2 || true
        echo "build_ops_aarch64: no ONNX Runtime headers, the library was not configured (set ONNXRUNTIME_INCLUDE_DIR or use --kernels-only)" >&2
        exit 1
    fi
    cmake --build "$build/lib" --target onnxq_ops -j "$(nproc)" >"$build/lib-build.log" 2>&1 \
        || { tail -n 30 "$build/lib-build.log" >&2; echo "build_ops_aarch64: build failed" >&2; exit 1; }
    lib=$(find "$build/lib" -name 'libonnxq_ops.so' | head -n 1)
    [ -n "$lib" ] || { echo "build_ops_aarch64: libonnxq_ops.so not produced" >&2; exit 1; }
    machine=$("${cross}readelf" -h "$lib" | awk -F: '/Machine/ {gsub(/^ +/, "", $2); print $2}')
    case "$machine" in
        *AArch64*) ;;
        *) echo "build_ops_aarch64: $lib is built for '$machine', not AArch64" >&2; exit 1 ;;
    esac
    exported=$("${cross}nm" -D --defined-only "$lib" | awk '$2 ~ /^[TW]$/ {print $3}' | sort | tr '\n' ' ')
    if [ "$exported" != "RegisterCustomOps " ]; then
        echo "build_ops_aarch64: $lib exports '$exported'; expected only RegisterCustomOps" >&2
        exit 1
    fi
    echo "   $lib: $machine ELF, exports RegisterCustomOps only"
fi

# -- 2. the kernels under qemu ----------------------------------------------------------------
echo "== kernel checks under qemu-aarch64 ($build/kernel_check)"
# the same flags as the native build of the kernels (ops/cmake/OnnxqCpuOps.cmake)
flags=(-std=c++17 -O3 -Wall -Wextra -fno-math-errno -ffp-contract=off -DONNXQ_NEON=1
       -I"$repo/ops/src" -I"$repo/ops/include")
"${cross}g++" "${flags[@]}" -c -o "$build/kernel_scalar.o" "$repo/ops/src/kernel_scalar.cc"
"${cross}g++" "${flags[@]}" -c -o "$build/kernel_neon.o" "$repo/ops/src/kernel_neon.cc"
# the checker itself at -O1: GCC 12's vectorizer crashes on its error reduction at -O3
"${cross}g++" "${flags[@]}" -O1 -c -o "$build/kernel_check.o" "$repo/scripts/aarch64/kernel_check.cc"
"${cross}g++" -o "$build/kernel_check" "$build/kernel_scalar.o" "$build/kernel_neon.o" "$build/kernel_check.o"
"$python" "$repo/scripts/aarch64/make_cases.py" "$build/cases"
qemu-aarch64 -L "$sysroot" "$build/kernel_check" "$build/cases"
echo "build_ops_aarch64: all checks passed"
