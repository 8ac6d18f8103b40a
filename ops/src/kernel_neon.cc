// NEON (AArch64 Advanced SIMD) kernels of MatMulBlockInt4. Baseline ARMv8.0-A: NEON is
// always present on AArch64, so no run-time check is needed; kernel_dispatch.cc picks
// these on aarch64 unless ONNXQ_ISA=scalar. Only kernel.h's interface is used.
//
// Exact path (accuracy_level 0), per column n and block b:
//   y[m,n] += s(n,b) * sum_k code_k * a[m,k]  -  zp(n,b) * s(n,b) * sum_k a[m,k]
// A column block is unpacked once into floats and reused for every row of A.
// int8 path (accuracy_level 4): A quantized per block exactly as kernel.h specifies; the
// integer block dot products use vmull_s8 (codes 0..15 are exact in int8) and the per-block
// float combination is written as kernel_scalar.cc writes it, so results match the scalar
// kernel bit for bit.
#if defined(__aarch64__)

#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "kernel.h"
#include "onnxq/block_int4_format.h"

namespace onnxq {
namespace ops {
namespace {

namespace fmt = ::onnxq::block_int4;

constexpr int64_t kColsPerTask = 16;

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

struct Scratch {
  void* p = nullptr;
  explicit Scratch(size_t bytes) : p(aligned_malloc(bytes)) {}
  ~Scratch() { aligned_free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

float zero_point(const Weights& w, int64_t n, int64_t b) {
  if (w.zp_packed) return static_cast<float>(fmt::zero_point_at(w.zp_packed + n * w.zp_bytes, b));
  if (w.zp_float) return w.zp_float[n * w.n_blocks + b];
  return static_cast<float>(fmt::kSymmetricZeroPoint);
}

// 16 packed bytes (32 codes, element 2i in the low nibble of byte i) -> codes in k order.
inline void unpack32(const uint8_t* src, uint8x16_t* lo16, uint8x16_t* hi16) {
  const uint8x16_t b = vld1q_u8(src);
  const uint8x16_t lo = vandq_u8(b, vdupq_n_u8(0x0F));
  const uint8x16_t hi = vshrq_n_u8(b, 4);
  *lo16 = vzip1q_u8(lo, hi);  // codes 0..15
  *hi16 = vzip2q_u8(lo, hi);  // codes 16..31
}

// Codes k0 .. k0+len of a column (len <= block size; k0 even) into dst (uint8).
inline void unpack_codes(const uint8_t* col, int64_t k0, int64_t len, uint8_t* dst) {
  int64_t k = 0;
  for (; k + 32 <= len; k += 32) {
    uint8x16_t a, b;
    unpack32(col + (k0 + k) / 2, &a, &b);
    vst1q_u8(dst + k, a);
    vst1q_u8(dst + k + 16, b);
  }
  for (; k < len; ++k) dst[k] = static_cast<uint8_t>(fmt::code_at(col, k0 + k));
}

// ---- exact (fp32) path ------------------------------------------------------------------

inline float dot_f32(const float* a, const float* c, int64_t len) {
  float32x4_t acc0 = vdupq_n_f32(0.f), acc1 = vdupq_n_f32(0.f), acc2 = vdupq_n_f32(0.f), acc3 = vdupq_n_f32(0.f);
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    acc0 = vfmaq_f32(acc0, vld1q_f32(a + k), vld1q_f32(c + k));
    acc1 = vfmaq_f32(acc1, vld1q_f32(a + k + 4), vld1q_f32(c + k + 4));
    acc2 = vfmaq_f32(acc2, vld1q_f32(a + k + 8), vld1q_f32(c + k + 8));
    acc3 = vfmaq_f32(acc3, vld1q_f32(a + k + 12), vld1q_f32(c + k + 12));
  }
  for (; k + 4 <= len; k += 4) acc0 = vfmaq_f32(acc0, vld1q_f32(a + k), vld1q_f32(c + k));
  float s = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));
  for (; k < len; ++k) s += a[k] * c[k];
  return s;
}

inline float sum_f32(const float* a, int64_t len) {
  float32x4_t acc = vdupq_n_f32(0.f);
  int64_t k = 0;
  for (; k + 4 <= len; k += 4) acc = vaddq_f32(acc, vld1q_f32(a + k));
  float s = vaddvq_f32(acc);
  for (; k < len; ++k) s += a[k];
  return s;
}

struct F32Ctx {
  const Weights* w;
  const Problem* p;
  const float* asum;  // [M][n_blocks]
  int* failed;        // set when a task cannot allocate its scratch
};

void f32_task(void* ctx, size_t t) {
  const F32Ctx& g = *static_cast<const F32Ctx*>(ctx);
  const Weights& w = *g.w;
  const Problem& p = *g.p;
  const int64_t K = w.K, bs = w.block_size, nb = w.n_blocks;
  Scratch codes8(static_cast<size_t>(bs) + 64);
  Scratch codesf(sizeof(float) * static_cast<size_t>(bs) + 64);
  if (!codes8.p || !codesf.p) {
    __atomic_store_n(g.failed, 1, __ATOMIC_RELAXED);
    return;
  }
  uint8_t* c8 = codes8.as<uint8_t>();
  float* cf = codesf.as<float>();
  const int64_t n_end = imin(w.N, static_cast<int64_t>(t + 1) * kColsPerTask);
  for (int64_t n = static_cast<int64_t>(t) * kColsPerTask; n < n_end; ++n) {
    const uint8_t* col = w.packed + n * w.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) p.Y[m * p.ldy + n] = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * bs, len = imin(bs, K - k0);
      unpack_codes(col, k0, len, c8);
      int64_t k = 0;
      for (; k + 16 <= len; k += 16) {  // uint8 -> float, 16 at a time
        const uint8x16_t v = vld1q_u8(c8 + k);
        const uint16x8_t l = vmovl_u8(vget_low_u8(v)), h = vmovl_u8(vget_high_u8(v));
        vst1q_f32(cf + k, vcvtq_f32_u32(vmovl_u16(vget_low_u16(l))));
        vst1q_f32(cf + k + 4, vcvtq_f32_u32(vmovl_u16(vget_high_u16(l))));
        vst1q_f32(cf + k + 8, vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))));
        vst1q_f32(cf + k + 12, vcvtq_f32_u32(vmovl_u16(vget_high_u16(h))));
      }
      for (; k < len; ++k) cf[k] = static_cast<float>(c8[k]);
      const float s = w.scales[n * nb + b];
      const float zs = zero_point(w, n, b) * s;
      for (int64_t m = 0; m < p.M; ++m) {
        const float d = dot_f32(p.A + m * p.lda + k0, cf, len);
        p.Y[m * p.ldy + n] += s * d - zs * g.asum[m * nb + b];
      }
    }
  }
}

int matmul_f32(const Weights& w, const Problem& p, const Runner& runner) {
  const int64_t nb = w.n_blocks;
  Scratch asum(sizeof(float) * static_cast<size_t>(p.M * nb) + 64);
  if (!asum.p) return kOutOfMemory;
  for (int64_t m = 0; m < p.M; ++m)
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * w.block_size;
      asum.as<float>()[m * nb + b] = sum_f32(p.A + m * p.lda + k0, imin(w.block_size, w.K - k0));
    }
  int failed = 0;
  F32Ctx g{&w, &p, asum.as<float>(), &failed};
  runner.run(static_cast<size_t>(ceil_div(w.N, kColsPerTask)), f32_task, &g);
  return __atomic_load_n(&failed, __ATOMIC_RELAXED) ? kOutOfMemory : kOk;
}

// ---- int8 path (accuracy_level 4) ---------------------------------------------------------

// Quantizes one row per block as kernel.h specifies (bit-exact with the scalar kernel).
void quantize_row(const float* a, int64_t K, int64_t bs, int8_t* q, float* scale, int32_t* qsum) {
  for (int64_t b = 0; b * bs < K; ++b) {
    const int64_t k0 = b * bs, len = imin(bs, K - k0);
    float32x4_t vmax = vdupq_n_f32(0.f);
    int64_t k = 0;
    for (; k + 4 <= len; k += 4) vmax = vmaxq_f32(vmax, vabsq_f32(vld1q_f32(a + k0 + k)));
    float amax = vmaxvq_f32(vmax);
    for (; k < len; ++k) amax = std::fmax(amax, std::fabs(a[k0 + k]));
    const float inv = amax > 0.f ? kInt8AMax / amax : 0.f;
    const float32x4_t vinv = vdupq_n_f32(inv);
    int32x4_t vs = vdupq_n_s32(0);
    k = 0;
    for (; k + 4 <= len; k += 4) {
      const int32x4_t qi = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(a + k0 + k), vinv));  // round half to even
      vs = vaddq_s32(vs, qi);
      const int16x4_t q16 = vqmovn_s32(qi);
      const int8x8_t q8 = vqmovn_s16(vcombine_s16(q16, q16));
      std::memcpy(q + k0 + k, &q8, 4);
    }
    int32_t s = vaddvq_s32(vs);
    for (; k < len; ++k) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(a[k0 + k] * inv));
      q[k0 + k] = static_cast<int8_t>(v);
      s += v;
    }
    scale[b] = amax / kInt8AMax;
    qsum[b] = s;
  }
}

inline int32_t dot_i8(const int8_t* q, const uint8_t* codes, int64_t len) {
  int32x4_t acc = vdupq_n_s32(0);
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    const int8x16_t a = vld1q_s8(q + k);
    const int8x16_t c = vreinterpretq_s8_u8(vld1q_u8(codes + k));  // 0..15: exact as int8
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(c));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(c));  // |sum| <= 2*127*15: no overflow
    acc = vpadalq_s16(acc, p);
  }
  int32_t s = vaddvq_s32(acc);
  for (; k < len; ++k) s += static_cast<int32_t>(q[k]) * codes[k];
  return s;
}

struct Int8Ctx {
  const Weights* w;
  const Problem* p;
  const int8_t* q;     // [M][K]
  const float* sa;     // [M][n_blocks]
  const int32_t* qs;   // [M][n_blocks]
  int* failed;
};

void int8_task(void* ctx, size_t t) {
  const Int8Ctx& g = *static_cast<const Int8Ctx*>(ctx);
  const Weights& w = *g.w;
  const Problem& p = *g.p;
  const int64_t K = w.K, bs = w.block_size, nb = w.n_blocks;
  Scratch codes8(static_cast<size_t>(bs) + 64);
  if (!codes8.p) {
    __atomic_store_n(g.failed, 1, __ATOMIC_RELAXED);
    return;
  }
  uint8_t* c8 = codes8.as<uint8_t>();
  const int64_t n_end = imin(w.N, static_cast<int64_t>(t + 1) * kColsPerTask);
  for (int64_t n = static_cast<int64_t>(t) * kColsPerTask; n < n_end; ++n) {
    const uint8_t* col = w.packed + n * w.row_bytes;
    for (int64_t m = 0; m < p.M; ++m) p.Y[m * p.ldy + n] = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * bs, len = imin(bs, K - k0);
      unpack_codes(col, k0, len, c8);
      const float s = w.scales[n * nb + b];
      const float zp = zero_point(w, n, b);
      for (int64_t m = 0; m < p.M; ++m) {
        const int32_t dot = dot_i8(g.q + m * K + k0, c8, len);
        const float sa = g.sa[m * nb + b];
        // the scalar kernel's expression, term by term (no contraction: -ffp-contract=off)
        const float t1 = s * sa * static_cast<float>(dot);
        const float t2 = zp * s * (sa * static_cast<float>(g.qs[m * nb + b]));
        p.Y[m * p.ldy + n] += t1 - t2;
      }
    }
  }
}

int matmul_int8(const Weights& w, const Problem& p, const Runner& runner) {
  const int64_t nb = w.n_blocks;
  Scratch q(static_cast<size_t>(p.M * w.K) + 64);
  Scratch sa(sizeof(float) * static_cast<size_t>(p.M * nb) + 64);
  Scratch qs(sizeof(int32_t) * static_cast<size_t>(p.M * nb) + 64);
  if (!q.p || !sa.p || !qs.p) return kOutOfMemory;
  for (int64_t m = 0; m < p.M; ++m)
    quantize_row(p.A + m * p.lda, w.K, w.block_size, q.as<int8_t>() + m * w.K, sa.as<float>() + m * nb,
                 qs.as<int32_t>() + m * nb);
  int failed = 0;
  Int8Ctx g{&w, &p, q.as<int8_t>(), sa.as<float>(), qs.as<int32_t>(), &failed};
  runner.run(static_cast<size_t>(ceil_div(w.N, kColsPerTask)), int8_task, &g);
  return __atomic_load_n(&failed, __ATOMIC_RELAXED) ? kOutOfMemory : kOk;
}

int matmul(const Weights& w, const Problem& p, const Runner& runner) {
  if (p.M == 0 || w.N == 0) return kOk;
  return p.int8_a ? matmul_int8(w, p, runner) : matmul_f32(w, p, runner);
}

void half_to_float(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
  for (; i < n; ++i) dst[i] = half_to_float_scalar(src[i]);
}

void float_to_half(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;  // vcvt_f16_f32 rounds to nearest even (FPCR default), like F16C
  for (; i + 4 <= n; i += 4) vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
  for (; i < n; ++i) dst[i] = float_to_half_scalar(src[i]);
}

const IsaKernels kNeon = {"neon", matmul, half_to_float, float_to_half};

}  // namespace

const IsaKernels* kernels_neon() { return &kNeon; }

}  // namespace ops
}  // namespace onnxq

#endif  // defined(__aarch64__)
