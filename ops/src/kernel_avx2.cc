// avx2 kernels: kernel_simd_impl.h compiled for this ISA only. Its functions run only after
// kernel_dispatch.cc has checked CPUID. Standard headers come before the target pragma so
// nothing from them is compiled for this ISA.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernel.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt")
#endif

namespace onnxq {
namespace ops {
namespace avx2_impl {
constexpr bool kVnni = false;
#include "simd_v256.h"
using V = V256;
#include "kernel_simd_impl.h"
}  // namespace avx2_impl
}  // namespace ops
}  // namespace onnxq

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace onnxq {
namespace ops {
namespace {
const IsaKernels kTable = {"avx2", avx2_impl::matmul, avx2_impl::half_to_float, avx2_impl::float_to_half};
}
const IsaKernels* kernels_avx2() { return &kTable; }
}  // namespace ops
}  // namespace onnxq
