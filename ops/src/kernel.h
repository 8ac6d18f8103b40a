// Internal interface between the ORT op (matmul_block_int4.cc) and the CPU kernels.
// Kernel files (kernel_*.cc) include only this header, <immintrin.h> and C headers: no C++
// standard-library templates are instantiated in ISA-specific translation units, so no
// AVX-512 code can leak into a function the baseline code calls.
#ifndef ONNXQ_OPS_KERNEL_H_
#define ONNXQ_OPS_KERNEL_H_

#include <cstddef>
#include <cstdint>

namespace onnxq {
namespace ops {

// Runs task(task_ctx, i) for i in [0, total), possibly in parallel (the session's intra-op
// thread pool). Tasks must be independent.
struct Runner {
  void (*parallel_for)(void* runner_ctx, size_t total, void (*task)(void*, size_t), void* task_ctx);
  void* runner_ctx;
  void run(size_t total, void (*task)(void*, size_t), void* task_ctx) const {
    parallel_for(runner_ctx, total, task, task_ctx);
  }
};

// A validated packed block-int4 weight (see ops/include/onnxq/block_int4_format.h).
struct Weights {
  const uint8_t* packed = nullptr;     // [N][row_bytes]
  const float* scales = nullptr;       // [N][n_blocks], float32
  const uint8_t* zp_packed = nullptr;  // [N][zp_bytes] uint8 nibbles, or null
  const float* zp_float = nullptr;     // [N][n_blocks] float32, or null (both null: symmetric, 8)
  int64_t K = 0, N = 0, block_size = 0, n_blocks = 0, row_bytes = 0, zp_bytes = 0;
};

// Y[M][N] = A[M][K] @ dequant(B). Y may be uninitialized on entry.
struct Problem {
  const float* A = nullptr;
  int64_t M = 0;
  int64_t lda = 0;
  float* Y = nullptr;
  int64_t ldy = 0;
  // accuracy_level 4: quantize A per block to int8 (symmetric, like ORT's MatMulNBits
  // accuracy_level 4) and use integer dot products.
  bool int8_a = false;
  // 0: pick by M; 1: force the small-M (GEMV) kernel; 2: force the panel (GEMM) kernel.
  int force_path = 0;
};

enum Status : int { kOk = 0, kOutOfMemory = 1 };

using MatMulFn = int (*)(const Weights&, const Problem&, const Runner&);
using HalfToFloatFn = void (*)(const uint16_t* src, float* dst, size_t n);
using FloatToHalfFn = void (*)(const float* src, uint16_t* dst, size_t n);

struct IsaKernels {
  const char* name;
  MatMulFn matmul;
  HalfToFloatFn half_to_float;
  FloatToHalfFn float_to_half;
};

const IsaKernels* kernels_scalar();
#if defined(ONNXQ_X86)
const IsaKernels* kernels_avx2();
const IsaKernels* kernels_avx512();
const IsaKernels* kernels_vnni();
#endif
#if defined(ONNXQ_NEON)
const IsaKernels* kernels_neon();  // kernel_neon.cc (aarch64)
#endif

// Quantization of A for the int8 path; every ISA implements exactly this (bit for bit):
//   amax = max |a| over the block (k < K only), inv = amax > 0 ? 127.0f / amax : 0,
//   q = round-half-even(a * inv) (float32 multiply), scale = amax / 127.0f.
inline constexpr float kInt8AMax = 127.0f;

// ---- helpers usable everywhere (no ISA-specific code) -----------------------------------
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

void* aligned_malloc(size_t bytes);  // 64-byte aligned; nullptr on failure
void aligned_free(void* p);

// Per-thread reusable scratch memory (64-byte aligned): fresh large allocations are mmap'd
// and page-fault on every call. Slots 0..7; a slot is reused by the next Scratch of the
// same slot on the same thread, so nested users take different slots. Buffers above
// kScratchRetainBytes are allocated and freed per use.
inline constexpr size_t kScratchRetainBytes = size_t{64} << 20;
void* scratch_acquire(int slot, size_t bytes, bool* owned);
void scratch_release(void* p, bool owned);
struct Scratch {
  void* p = nullptr;
  bool owned = false;
  Scratch(int slot, size_t bytes) : p(scratch_acquire(slot, bytes, &owned)) {}
  ~Scratch() { scratch_release(p, owned); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

float half_to_float_scalar(uint16_t h);
uint16_t float_to_half_scalar(float f);

}  // namespace ops
}  // namespace onnxq

#endif  // ONNXQ_OPS_KERNEL_H_
