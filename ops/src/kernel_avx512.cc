// avx512 kernels: kernel_simd_impl.h compiled for this ISA only. Its functions run only after
// kernel_dispatch.cc has checked CPUID. Standard headers come before the target pragma so
// nothing from them is compiled for this ISA.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernel.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq")
#endif

namespace onnxq {
namespace ops {
namespace avx512_impl {
constexpr bool kVnni = false;
#include "simd_v512.h"
using V = V512;
#include "kernel_simd_impl.h"
}  // namespace avx512_impl
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
const IsaKernels kTable = {"avx512", avx512_impl::matmul, avx512_impl::half_to_float, avx512_impl::float_to_half};
}
const IsaKernels* kernels_avx512() { return &kTable; }
}  // namespace ops
}  // namespace onnxq
