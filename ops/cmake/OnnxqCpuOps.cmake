# The CPU op library onnxq_ops (included by ops/CMakeLists.txt once ORT headers are found).
include("${CMAKE_CURRENT_LIST_DIR}/OnnxqSanitize.cmake")
message(STATUS "onnxq: ONNX Runtime headers: ${ONNXQ_ORT_INCLUDE_DIR} (${ONNXQ_ORT_HEADERS_SOURCE})")

add_library(onnxq_ort_headers INTERFACE)
target_include_directories(onnxq_ort_headers SYSTEM INTERFACE "${ONNXQ_ORT_INCLUDE_DIR}")
# Build against C API version 21 (onnxruntime 1.21) so the library loads into any ORT >= 1.21.
target_compile_definitions(onnxq_ort_headers INTERFACE ORT_API_MANUAL_INIT ONNXQ_ORT_API_VERSION=21)

# Common settings of an op library: hidden symbols, only RegisterCustomOps exported.
function(onnxq_op_library_settings target)
  set_target_properties(${target} PROPERTIES
    PREFIX "lib"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON
    POSITION_INDEPENDENT_CODE ON)
  target_link_libraries(${target} PRIVATE onnxq_format onnxq_ort_headers)
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    target_link_options(${target} PRIVATE
      "LINKER:--version-script=${ONNXQ_OPS_VERSION_SCRIPT}" "LINKER:--no-undefined" "LINKER:-z,defs")
    set_property(TARGET ${target} APPEND PROPERTY LINK_DEPENDS "${ONNXQ_OPS_VERSION_SCRIPT}")
  endif()
endfunction()

set(_cpu_sources
  src/register.cc
  src/matmul_block_int4.cc
  src/kernel_dispatch.cc
  src/kernel_scalar.cc)
set(_isa_sources)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  list(APPEND _isa_sources src/kernel_avx2.cc src/kernel_avx512.cc src/kernel_vnni.cc)
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # GCC 12 false positive inside its own masked-load intrinsics
    set_source_files_properties(${_isa_sources} PROPERTIES COMPILE_OPTIONS "-Wno-maybe-uninitialized;-Wno-uninitialized;-fno-tree-pre")
  endif()
endif()
set(_neon_sources)  # AArch64: NEON kernels (baseline there); see scripts/build_ops_aarch64.sh
if(CMAKE_SYSTEM_PROCESSOR MATCHES "^(aarch64|arm64|ARM64)$")
  set(_neon_sources src/kernel_neon.cc)
endif()
# The kernels (no ORT dependency), shared by the op library and the dev benchmark.
add_library(onnxq_cpu_kernels OBJECT src/kernel_scalar.cc ${_isa_sources} ${_neon_sources})
set_target_properties(onnxq_cpu_kernels PROPERTIES
  POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
target_include_directories(onnxq_cpu_kernels PUBLIC src)
target_link_libraries(onnxq_cpu_kernels PUBLIC onnxq_format)
if(_isa_sources)
  target_compile_definitions(onnxq_cpu_kernels PUBLIC ONNXQ_X86=1)
endif()
if(_neon_sources)
  target_compile_definitions(onnxq_cpu_kernels PUBLIC ONNXQ_NEON=1)
endif()
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  # Baseline x86-64-v2 everywhere; the AVX2/AVX-512 kernels raise it per function
  # (#pragma GCC target in their files) and run only after a CPUID check.
  set(_onnxq_cxx_flags -O3 -Wall -Wextra -fno-math-errno -ffp-contract=off)
  if(_isa_sources)
    list(APPEND _onnxq_cxx_flags -march=x86-64-v2 -mtune=generic)
  endif()
  target_compile_options(onnxq_cpu_kernels PUBLIC ${_onnxq_cxx_flags})
endif()

list(REMOVE_ITEM _cpu_sources src/kernel_scalar.cc)
add_library(onnxq_ops SHARED ${_cpu_sources})
onnxq_op_library_settings(onnxq_ops)
target_link_libraries(onnxq_ops PRIVATE onnxq_cpu_kernels)
onnxq_sanitize(onnxq_cpu_kernels)
onnxq_sanitize(onnxq_ops)

option(ONNXQ_BUILD_KERNEL_BENCH "Build ops/tools/kernel_bench (development)" OFF)
if(ONNXQ_BUILD_KERNEL_BENCH)
  add_executable(kernel_bench tools/kernel_bench.cc)
  target_link_libraries(kernel_bench PRIVATE onnxq_cpu_kernels)
endif()
find_package(Threads REQUIRED)
target_link_libraries(onnxq_ops PRIVATE Threads::Threads)

install(TARGETS onnxq_ops LIBRARY DESTINATION "${ONNXQ_INSTALL_LIBDIR}" RUNTIME DESTINATION "${ONNXQ_INSTALL_LIBDIR}")

