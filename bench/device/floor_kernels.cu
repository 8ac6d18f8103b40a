// Reference kernels for reading the skinny-GEMV timings honestly (bench/bench_cuda_int4.py):
//  * empty: does nothing; a CUDA graph of L of them gives the per-launch floor that every
//    kernel in the graph pays (launch + drain), with and without programmatic dependent launch.
//  * stream: reads `bytes` once with the best simple pattern (16-byte ld.global.nc.L1::no_allocate,
//    coalesced 512 B per warp instruction, 8 loads per thread issued before any use, one wave
//    of small CTAs) and does no math: the achievable time for the layer's bytes in this graph.
// Built by bench/device/build_cuda_harness.sh into libonnxq_cuda_floor.so (not part of onnxq).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace {

__device__ __forceinline__ void pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__global__ void empty_kernel(int pdl) {
  if (pdl) {
    pdl_launch();
    pdl_wait();
  }
}

constexpr int kLoads = 8;
constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) stream_kernel(const uint4* __restrict__ src, size_t n16,
                                                          unsigned* sink, int pdl) {
  if (pdl) pdl_launch();
  const size_t base = (size_t)blockIdx.x * (kThreads * kLoads) + threadIdx.x;
  uint4 v[kLoads];
#pragma unroll
  for (int i = 0; i < kLoads; ++i) {
    const size_t idx = base + (size_t)i * kThreads;
    if (idx < n16) {
      asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                   : "=r"(v[i].x), "=r"(v[i].y), "=r"(v[i].z), "=r"(v[i].w)
                   : "l"(src + idx));
    } else {
      v[i] = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  if (pdl) pdl_wait();
  unsigned x = 0;
#pragma unroll
  for (int i = 0; i < kLoads; ++i) x ^= v[i].x ^ v[i].y ^ v[i].z ^ v[i].w;
  if (x == 0x9E3779B9u) sink[0] = x;  // keeps the loads (sink is scratch; rarely taken)
}

}  // namespace

// kind 0: empty kernel (src, bytes, sink unused); kind 1: stream read of `bytes` (multiple of 16).
extern "C" __attribute__((visibility("default"))) int onnxq_floor_launch(int kind, const void* src, size_t bytes,
                                                                         void* sink, int pdl, void* stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.stream = static_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  cudaError_t e;
  if (kind == 0) {
    cfg.gridDim = dim3(1);
    cfg.blockDim = dim3(32);
    e = cudaLaunchKernelEx(&cfg, empty_kernel, pdl);
  } else {
    const size_t n16 = bytes / 16;
    const size_t per_cta = (size_t)kThreads * kLoads;
    cfg.gridDim = dim3(static_cast<unsigned>((n16 + per_cta - 1) / per_cta));
    cfg.blockDim = dim3(kThreads);
    e = cudaLaunchKernelEx(&cfg, stream_kernel, static_cast<const uint4*>(src), n16, static_cast<unsigned*>(sink), pdl);
  }
  return e == cudaSuccess ? 0 : 1;
}
