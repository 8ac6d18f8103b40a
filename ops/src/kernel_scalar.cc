// Scalar C++ reference kernels: the spec the SIMD kernels are tested against (through the
// op, with ONNXQ_ISA=scalar). Straightforward loops, no tiling.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernel.h"
#include "onnxq/block_int4_format.h"

namespace onnxq {
namespace ops {

void* aligned_malloc(size_t bytes) {
  if (bytes == 0) bytes = 64;
  void* p = nullptr;
  if (posix_memalign(&p, 64, (bytes + 63) / 64 * 64) != 0) return nullptr;
  return p;
}
void aligned_free(void* p) { std::free(p); }

namespace {
struct ThreadScratch {
  void* p[8] = {};
  size_t n[8] = {};
  ~ThreadScratch() {
    for (void* q : p) aligned_free(q);
  }
};
thread_local ThreadScratch t_scratch;
}  // namespace

void* scratch_acquire(int slot, size_t bytes, bool* owned) {
  if (bytes == 0) bytes = 64;
  if (bytes > kScratchRetainBytes || slot < 0 || slot >= 8) {
    *owned = true;
    return aligned_malloc(bytes);
  }
  *owned = false;
  ThreadScratch& t = t_scratch;
  if (t.n[slot] < bytes) {
    aligned_free(t.p[slot]);
    t.p[slot] = aligned_malloc(bytes);
    t.n[slot] = t.p[slot] ? bytes : 0;
  }
  return t.p[slot];
}

void scratch_release(void* p, bool owned) {
  if (owned) aligned_free(p);
}

float half_to_float_scalar(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      mant &= 0x3FFu;
      bits = sign | static_cast<uint32_t>(127 - 15 - e) << 23 | mant << 13;
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | mant << 13;
  } else {
    bits = sign | (exp - 15 + 127) << 23 | mant << 13;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t float_to_half_scalar(float f) {  // round to nearest even, like F16C
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7FFFFFFFu;
  if (x >= 0x7F800000u) {  // Inf / NaN
    return sign | 0x7C00u | (x > 0x7F800000u ? 0x200u | ((x >> 13) & 0x3FFu) : 0u);
  }
  if (x >= 0x477FF000u) return sign | 0x7C00u;  // overflow after rounding
  if (x < 0x38800000u) {                          // subnormal or zero in half
    if (x < 0x33000000u) return sign;             // < 2^-25: rounds to 0
    const uint32_t e = x >> 23;
    const uint32_t mant = (x & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 + (113 - e)
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return sign | static_cast<uint16_t>(h);
  }
  uint32_t h = ((x >> 13) - ((127 - 15) << 10));
  const uint32_t rem = x & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return sign | static_cast<uint16_t>(h);
}

namespace {

namespace fmt = ::onnxq::block_int4;

float zero_point(const Weights& w, int64_t n, int64_t b) {
  if (w.zp_packed) return static_cast<float>(fmt::zero_point_at(w.zp_packed + n * w.zp_bytes, b));
  if (w.zp_float) return w.zp_float[n * w.n_blocks + b];
  return static_cast<float>(fmt::kSymmetricZeroPoint);
}

// Exact path: Y = A @ W with W dequantized element by element as the reference does.
void matmul_f32(const Weights& w, const Problem& p) {
  const int64_t K = w.K, bs = w.block_size;
  float* wcol = static_cast<float*>(aligned_malloc(sizeof(float) * K));
  for (int64_t n = 0; n < w.N; ++n) {
    const uint8_t* col = w.packed + n * w.row_bytes;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t b = k / bs;
      wcol[k] = fmt::dequantize(fmt::code_at(col, k), zero_point(w, n, b), w.scales[n * w.n_blocks + b]);
    }
    for (int64_t m = 0; m < p.M; ++m) {
      const float* a = p.A + m * p.lda;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) acc += a[k] * wcol[k];
      p.Y[m * p.ldy + n] = acc;
    }
  }
  aligned_free(wcol);
}

// int8 path (accuracy_level 4): A quantized per block (see kernel.h), integer block dots.
void quantize_row(const float* a, int64_t K, int64_t bs, int8_t* q, float* scale, int32_t* qsum) {
  for (int64_t b = 0; b * bs < K; ++b) {
    const int64_t k0 = b * bs, k1 = k0 + bs < K ? k0 + bs : K;
    float amax = 0.f;
    for (int64_t k = k0; k < k1; ++k) amax = std::fmax(amax, std::fabs(a[k]));
    const float inv = amax > 0.f ? kInt8AMax / amax : 0.f;
    int32_t s = 0;
    for (int64_t k = k0; k < k1; ++k) {
      const int32_t v = static_cast<int32_t>(std::nearbyint(a[k] * inv));
      q[k] = static_cast<int8_t>(v);
      s += v;
    }
    scale[b] = amax / kInt8AMax;
    qsum[b] = s;
  }
}

void matmul_int8(const Weights& w, const Problem& p) {
  const int64_t K = w.K, bs = w.block_size, nb = w.n_blocks;
  int8_t* q = static_cast<int8_t*>(aligned_malloc(static_cast<size_t>(K)));
  float* sa = static_cast<float*>(aligned_malloc(sizeof(float) * nb));
  int32_t* qsum = static_cast<int32_t*>(aligned_malloc(sizeof(int32_t) * nb));
  for (int64_t m = 0; m < p.M; ++m) {
    quantize_row(p.A + m * p.lda, K, bs, q, sa, qsum);
    for (int64_t n = 0; n < w.N; ++n) {
      const uint8_t* col = w.packed + n * w.row_bytes;
      float acc = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t k0 = b * bs, k1 = k0 + bs < K ? k0 + bs : K;
        int32_t dot = 0;
        for (int64_t k = k0; k < k1; ++k) dot += static_cast<int32_t>(q[k]) * fmt::code_at(col, k);
        const float s = w.scales[n * nb + b];
        acc += s * sa[b] * static_cast<float>(dot) - zero_point(w, n, b) * s * (sa[b] * static_cast<float>(qsum[b]));
      }
      p.Y[m * p.ldy + n] = acc;
    }
  }
  aligned_free(q);
  aligned_free(sa);
  aligned_free(qsum);
}

int matmul(const Weights& w, const Problem& p, const Runner&) {
  if (p.int8_a)
    matmul_int8(w, p);
  else
    matmul_f32(w, p);
  return kOk;
}

void half_to_float(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = half_to_float_scalar(src[i]);
}
void float_to_half(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = float_to_half_scalar(src[i]);
}

const IsaKernels kScalar = {"scalar", matmul, half_to_float, float_to_half};

}  // namespace

const IsaKernels* kernels_scalar() { return &kScalar; }

}  // namespace ops
}  // namespace onnxq
