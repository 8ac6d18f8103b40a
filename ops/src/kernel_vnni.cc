// vnni kernels: kernel_simd_impl.h compiled for this ISA only. Its functions run only after
// kernel_dispatch.cc has checked CPUID. Standard headers come before the target pragma so
// nothing from them is compiled for this ISA.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernel.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,popcnt,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")
#endif

namespace onnxq {
namespace ops {
namespace vnni_impl {
constexpr bool kVnni = true;
#include "simd_v512.h"
using V = V512;
#include "kernel_simd_impl.h"
}  // namespace vnni_impl
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
const IsaKernels kTable = {"vnni", vnni_impl::matmul, vnni_impl::half_to_float, vnni_impl::float_to_half};
}
const IsaKernels* kernels_vnni() { return &kTable; }
}  // namespace ops
}  // namespace onnxq
