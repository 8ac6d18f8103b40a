# Cross-compile the op library for Linux/AArch64 with Debian's cross toolchain
# (apt-get install g++-aarch64-linux-gnu). Used by scripts/build_ops_aarch64.sh:
#   cmake -S ops -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=ops/cmake/toolchain-aarch64.cmake
# Override the compiler prefix with -DONNXQ_CROSS_PREFIX=... (default aarch64-linux-gnu-).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT ONNXQ_CROSS_PREFIX)
  set(ONNXQ_CROSS_PREFIX "aarch64-linux-gnu-")
endif()
set(CMAKE_C_COMPILER "${ONNXQ_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${ONNXQ_CROSS_PREFIX}g++")

# Target libraries/headers come from the cross sysroot; programs (the fetch script, apt)
# from the host. The ORT headers are architecture-independent and found by absolute path.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Binaries built with this toolchain run on x86-64 under qemu-user.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
