// CUDA kernels for com.onnxq MatMulBlockInt4: Y = A @ dequant(B) (+ bias).
//
// Three kernel families (see block_int4_cuda.h for the layout):
//  * skinny_f16: fp16 A, M <= 16. Each warp owns 16 output columns and a contiguous range
//    of 128-k "units". A lane (g = lane/4, t = lane%4) loads 16 bytes (32 codes) of column
//    g and of column g+8 per unit, dequantizes them in registers straight into the A
//    fragment of mma.m16n8k16 (weights as the 16-row operand, activations as the 8-column
//    operand), so B never touches shared memory. The k order inside a unit is permuted
//    (logical k 16s+2t+e -> actual 32t+4s+e, 16s+8+2t+e -> 32t+4s+2+e) identically for
//    both operands, which makes the activation fragment a plain contiguous 16-byte load.
//    Warps of a block split K; one shared-memory reduction at the end.
//  * gemm_f16: fp16 A, any M (used for M > 16). CTA tile BM x BN x 64; A via cp.async,
//    B loaded as packed bytes into registers one k-tile ahead, dequantized to fp16 into
//    shared memory; ldmatrix + mma.sync m16n8k16 with fp32 accumulation.
//  * simt_f32: fp32 A, any M. Exact fp32 dequant ((code - zp) * scale, one rounding, the
//    same arithmetic as onnxq.formats) and fp32 FMA on CUDA cores.
//
// fp16 dequant trick: a nibble c OR'ed into the mantissa of 1024.0h gives 1024 + c exactly;
// a nibble in bits 4..7 gives 1024 + 16c. One fma.f16x2 with (1, 1/16) and
// (-(1024+z), -(64+z)) yields the exact integers (c0 - z, c1 - z).

#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstdarg>
#include <cstdint>
#include <cstdio>

#include "block_int4_cuda.h"

namespace onnxq {
namespace cuda {
namespace {

// ------------------------------------------------------------------------------------
// Device helpers
// ------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t lop3_and_or(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t r;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
  return r;
}

__device__ __forceinline__ uint32_t hfma2_u32(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}

__device__ __forceinline__ uint32_t hmul2_u32(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

constexpr uint32_t kMulLoHi = 0x2C003C00u;  // half2(1.0, 1/16)

// half2 bits of (-(1024 + z), -(64 + z)) for an integer zero point z in 0..15.
__device__ __forceinline__ uint32_t zp_sub_bits(uint32_t z) {
  return ((0xD400u + 16u * z) << 16) | (0xE400u + z);
}

// Pair J (codes 2J and 2J+1, i.e. byte J) of a 32-bit word of packed codes, dequantized to
// the exact integers (c_lo - z, c_hi - z) as half2 bits.
template <int J>
__device__ __forceinline__ uint32_t dq_pair(uint32_t x, uint32_t sub) {
  const uint32_t y = __byte_perm(x, 0u, J | (4 << 4) | (J << 8) | (4 << 12));
  return hfma2_u32(lop3_and_or(y, 0x00F0000Fu, 0x64006400u), kMulLoHi, sub);
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Streaming 16/8-byte loads of packed weights: read once, keep them out of L1.
__device__ __forceinline__ uint4 ldg_stream_v4(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint4 ldg_stream_v4_l2_256(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint4 ldg_nc_v4(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  return r;
}
__device__ __forceinline__ uint2 ldg_stream_v2(const void* p) {
  uint2 r;
  asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
  return r;
}

// 32 codes starting at code index kc of a packed row; `nbytes` valid bytes (16, 8 or 0).
// vec16: row start and offset are 16-byte aligned; otherwise they are 8-byte aligned.
__device__ __forceinline__ uint4 load_wchunk(const uint8_t* row, int64_t kc, int nbytes, bool vec16) {
  uint4 r = make_uint4(0u, 0u, 0u, 0u);
  const uint8_t* p = row + (kc >> 1);
  if (nbytes == 16) {
    if (vec16) {
      r = ldg_stream_v4(p);
    } else {
      const uint2 lo = ldg_stream_v2(p), hi = ldg_stream_v2(p + 8);
      r = make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
  } else if (nbytes == 8) {
    const uint2 lo = ldg_stream_v2(p);
    r.x = lo.x;
    r.y = lo.y;
  }
  return r;
}

// Valid bytes of the 32-code chunk at kc in a row of Kp codes (Kp is a multiple of 16).
__device__ __forceinline__ int chunk_bytes(int64_t kc, int64_t kp) {
  return kc + 32 <= kp ? 16 : (kc + 16 <= kp ? 8 : 0);
}

__device__ __forceinline__ uint32_t zero_point(const uint8_t* zp, int64_t col, int64_t zcols, int64_t kb) {
  if (zp == nullptr) return (uint32_t)kSymmetricZeroCode;
  const uint32_t byte = zp[col * zcols + (kb >> 1)];
  return (kb & 1) ? (byte >> 4) : (byte & 0xFu);
}

__device__ __forceinline__ void prefetch_l1(const void* p) {
  asm volatile("prefetch.global.L1 [%0];" ::"l"(p));
}

__device__ __forceinline__ uint32_t ldg_u16(const uint16_t* p) { return (uint32_t)__ldg(p); }

__device__ __forceinline__ float half_bits_to_float(uint32_t h) {
  return __half2float(__ushort_as_half((unsigned short)h));
}

__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

struct KernelParams {
  const void* a;
  const uint8_t* b;
  const void* s;
  const uint8_t* z;
  const void* bias;
  void* y;
  int64_t m, k, n;
  int64_t bs, nb, kp;      // block size, blocks per column, padded K = nb * bs
  int bs_shift;            // log2(bs)
  int64_t row_bytes;       // nb * bs / 2
  int64_t zcols;           // ceil(nb / 2)
  int b_vec16;             // packed rows are 16-byte aligned
  int pdl;                 // launched with programmatic dependent launch
  // skinny
  int units;               // ceil(Kp / 128)
  int units_full;          // floor(Kp / 128): units lying wholly inside the packed rows
  int units_per_warp;
  int skinny_cfg;          // bit 0: warps interleave units (else contiguous K slices); bit 1: L2::256B loads;
                           // bit 2: shared-memory whole-line staging; bit 4: default L1 policy;
                           // bit 3: DIAGNOSTIC stream-only (no math, wrong Y), benchmarks only
  // tiling (gemm / simt)
  int tiles_n;
};

// cp.async / ldmatrix helpers
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem), "r"(src_bytes));
}
// Packed weights: ask L2 for the whole 256-byte block (neighbouring k-tiles come next).
__device__ __forceinline__ void cp_async16_l2_256(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(smem_u32(smem)), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(smem_u32(smem)), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

// ------------------------------------------------------------------------------------
// Skinny fp16 kernel (M <= 16), persistent
// ------------------------------------------------------------------------------------
// Each warp walks a stream of items (column group of 16, one 128-k unit of the warp's K
// slice); every warp of a block does exactly units_per_warp items per group (units past K
// are masked), so all warps of a block reach each group's reduction together. The packed
// weights, scales and zero points of the next kRing-1 items are in flight in a register
// ring while the current item is dequantized and multiplied; the stream crosses group
// boundaries, so HBM stays busy through the per-group reductions. Columns past N read
// column 0 (their results are never stored); activation rows past M read row M-1 (likewise),
// so the hot path has no per-lane guards.

constexpr int kSkinnyWarps = 8;
constexpr int kSkinnyThreads = kSkinnyWarps * 32;
constexpr int kSkinnyDefaultCfg = 0;  // see KernelParams::skinny_cfg

// Values are kept exactly as loaded (no arithmetic on them until the item is computed):
// combining a just-loaded value at prefetch time would stall the warp for the whole memory
// latency at every prefetch.
struct SkinnySlot {
  uint4 w0, w1;         // 32 codes of column g and of column g+8
  uint32_t s0[2], s1[2];  // fp16 scale bits of column g / g+8 for half-chunk h
  uint32_t z0[2], z1[2];  // raw zero-point bytes (kZP) of column g / g+8 for half-chunk h
  uint32_t zsh[2];        // nibble shift (0 or 4) of half-chunk h
};

// A lane's pointers for one column group, at the start of its warp's K slice.
struct SkinnyCols {
  const uint8_t* w0;
  const uint8_t* w1;
  const uint16_t* s0;
  const uint16_t* s1;
  const uint8_t* z0;
  const uint8_t* z1;
};

__device__ __forceinline__ SkinnyCols skinny_cols(const KernelParams& p, int64_t group, int g, int t, int u0) {
  SkinnyCols c;
  int64_t col0 = group * 16 + g, col1 = col0 + 8;
  if (col0 >= p.n) col0 = 0;
  if (col1 >= p.n) col1 = 0;
  const int64_t off = (int64_t)u0 * 64 + t * 16;
  c.w0 = p.b + col0 * p.row_bytes + off;
  c.w1 = p.b + col1 * p.row_bytes + off;
  c.s0 = static_cast<const uint16_t*>(p.s) + col0 * p.nb;
  c.s1 = static_cast<const uint16_t*>(p.s) + col1 * p.nb;
  c.z0 = p.z ? p.z + col0 * p.zcols : p.z;
  c.z1 = p.z ? p.z + col1 * p.zcols : p.z;
  return c;
}

// Raw zero-point byte of block kb (8 = code 8 in both nibbles when symmetric or out of range).
template <bool kZP>
__device__ __forceinline__ uint32_t zp_byte(const uint8_t* zrow, int kb, bool in) {
  if (!kZP) return 0x88u;
  return in ? (uint32_t)__ldg(zrow + (kb >> 1)) : 0x88u;
}

template <bool kScaleAfter, bool kZP, bool kFast>
__device__ __forceinline__ void skinny_load(const KernelParams& p, const SkinnyCols& c, int u, int ustep, int t,
                                            SkinnySlot& sl) {
  const int kc = u * 128 + t * 32;
  const int off = ustep * 64;  // bytes from the slice start
  if (kFast && u < p.units_full) {  // the whole unit lies inside the packed rows
    if (p.skinny_cfg & 16) {  // default L1 policy: the line is allocated, sector misses merge
      sl.w0 = ldg_nc_v4(c.w0 + off);
      sl.w1 = ldg_nc_v4(c.w1 + off);
    } else if (p.skinny_cfg & 2) {
      sl.w0 = ldg_stream_v4_l2_256(c.w0 + off);
      sl.w1 = ldg_stream_v4_l2_256(c.w1 + off);
    } else {
      sl.w0 = ldg_stream_v4(c.w0 + off);
      sl.w1 = ldg_stream_v4(c.w1 + off);
    }
  } else {
    const int kp = (int)p.kp;
    const int nbytes = u < p.units ? (kc + 32 <= kp ? 16 : (kc + 16 <= kp ? 8 : 0)) : 0;
    sl.w0 = load_wchunk(c.w0 + off - (kc >> 1), kc, nbytes, p.b_vec16 != 0);
    sl.w1 = load_wchunk(c.w1 + off - (kc >> 1), kc, nbytes, p.b_vec16 != 0);
  }
  if (kScaleAfter) {  // bs % 128 == 0: one block per unit (units < p.units always lie inside)
    const int kb = u >> (p.bs_shift - 7);
    const bool in = u < p.units;
    sl.s0[0] = in ? ldg_u16(c.s0 + kb) : 0u;
    sl.s1[0] = in ? ldg_u16(c.s1 + kb) : 0u;
    sl.z0[0] = zp_byte<kZP>(c.z0, kb, in);
    sl.z1[0] = zp_byte<kZP>(c.z1, kb, in);
    sl.zsh[0] = (kb & 1) * 4;
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kh = kc + 16 * h;
      const bool in = u < p.units && kh < (int)p.kp;
      const int kb = kh >> p.bs_shift;
      sl.s0[h] = in ? ldg_u16(c.s0 + kb) : 0u;
      sl.s1[h] = in ? ldg_u16(c.s1 + kb) : 0u;
      sl.z0[h] = zp_byte<kZP>(c.z0, kb, in);
      sl.z1[h] = zp_byte<kZP>(c.z1, kb, in);
      sl.zsh[h] = (kb & 1) * 4;
    }
  }
}

// Activation fragment for one unit: 16 words (codes kc..kc+31 of row `row`); `a` points at
// (row, kc). k past K reads as zero.
template <bool kFast>
__device__ __forceinline__ void load_act(const uint16_t* a, int kc, int k, uint32_t (&f)[16]) {
  if (kFast && kc + 32 <= k) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(a) + q);
      f[4 * q + 0] = v.x;
      f[4 * q + 1] = v.y;
      f[4 * q + 2] = v.z;
      f[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t lo = (kc + 2 * i < k) ? ldg_u16(a + 2 * i) : 0u;
      const uint32_t hi = (kc + 2 * i + 1 < k) ? ldg_u16(a + 2 * i + 1) : 0u;
      f[i] = lo | (hi << 16);
    }
  }
}

template <int NT, bool kScaleAfter, bool kFast>
__device__ __forceinline__ void skinny_compute(const SkinnySlot& sl, const uint16_t* const (&arow)[NT], int kc,
                                               int k, float (&acc)[NT][4]) {
  uint32_t af[NT][16];
#pragma unroll
  for (int j = 0; j < NT; ++j) load_act<kFast>(arow[j] + kc, kc, k, af[j]);

  uint32_t sub0[2], sub1[2], sc0[2], sc1[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int hh = kScaleAfter ? 0 : h;
    sub0[h] = zp_sub_bits((sl.z0[hh] >> sl.zsh[hh]) & 0xFu);
    sub1[h] = zp_sub_bits((sl.z1[hh] >> sl.zsh[hh]) & 0xFu);
    sc0[h] = sl.s0[hh] | (sl.s0[hh] << 16);
    sc1[h] = sl.s1[hh] | (sl.s1[hh] << 16);
  }

  float tmp[2][NT][4];  // two independent mma chains (even / odd steps)
#pragma unroll
  for (int c = 0; c < 2; ++c)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) tmp[c][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < 8; ++s) {
    const int w = s >> 1;  // word of the chunk holding pairs 2s, 2s+1
    const int h = w >> 1;
    const uint32_t x0 = word_of(sl.w0, w), x1 = word_of(sl.w1, w);
    uint32_t r0, r1, r2, r3;
    if (s & 1) {
      r0 = dq_pair<2>(x0, sub0[h]);
      r2 = dq_pair<3>(x0, sub0[h]);
      r1 = dq_pair<2>(x1, sub1[h]);
      r3 = dq_pair<3>(x1, sub1[h]);
    } else {
      r0 = dq_pair<0>(x0, sub0[h]);
      r2 = dq_pair<1>(x0, sub0[h]);
      r1 = dq_pair<0>(x1, sub1[h]);
      r3 = dq_pair<1>(x1, sub1[h]);
    }
    if (!kScaleAfter) {
      r0 = hmul2_u32(r0, sc0[h]);
      r2 = hmul2_u32(r2, sc0[h]);
      r1 = hmul2_u32(r1, sc1[h]);
      r3 = hmul2_u32(r3, sc1[h]);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) mma16816(tmp[s & 1][j], r0, r1, r2, r3, af[j][2 * s], af[j][2 * s + 1]);
  }
  if (kScaleAfter) {
    const float fs0 = half_bits_to_float(sl.s0[0]), fs1 = half_bits_to_float(sl.s1[0]);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      acc[j][0] = fmaf(tmp[0][j][0] + tmp[1][j][0], fs0, acc[j][0]);
      acc[j][1] = fmaf(tmp[0][j][1] + tmp[1][j][1], fs0, acc[j][1]);
      acc[j][2] = fmaf(tmp[0][j][2] + tmp[1][j][2], fs1, acc[j][2]);
      acc[j][3] = fmaf(tmp[0][j][3] + tmp[1][j][3], fs1, acc[j][3]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] += tmp[0][j][e] + tmp[1][j][e];
  }
}

template <int NT, bool kScaleAfter, bool kZP, bool kFast>
__global__ void __launch_bounds__(kSkinnyThreads, 2) skinny_f16_kernel(const KernelParams p) {
  constexpr bool kLean = kScaleAfter && !kZP;  // smallest ring slots
  constexpr int kRing = NT == 1 ? (kLean ? 6 : 4) : (kLean ? 4 : 3);  // items in flight per warp: kRing - 1
  __shared__ float red[kSkinnyWarps][NT * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int upw = p.units_per_warp;
  const int64_t groups = (p.n + 15) / 16;
  const int my_groups = (int)((groups - blockIdx.x + gridDim.x - 1) / gridDim.x);
  const int items = my_groups * upw;
  const int ustride = (p.skinny_cfg & 1) ? kSkinnyWarps : 1;
  const int u0 = (p.skinny_cfg & 1) ? warp : warp * upw;
  const int k = (int)p.k;
  const uint16_t* arow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t row = (j * 8 + g) < p.m ? (j * 8 + g) : p.m - 1;
    arow[j] = static_cast<const uint16_t*>(p.a) + row * p.k;
  }

  if (p.pdl) griddep_launch_dependents();

  SkinnySlot ring[kRing];
  int pf_gi = 0, pf_ul = 0;  // next item to prefetch
  SkinnyCols pf = skinny_cols(p, blockIdx.x, g, t, u0);
#pragma unroll
  for (int r = 0; r < kRing - 1; ++r) {
    if (pf_gi < my_groups) skinny_load<kScaleAfter, kZP, kFast>(p, pf, u0 + pf_ul * ustride, pf_ul * ustride, t, ring[r]);
    if (++pf_ul == upw) {
      pf_ul = 0;
      ++pf_gi;
      pf = skinny_cols(p, blockIdx.x + (int64_t)pf_gi * gridDim.x, g, t, u0);
    }
  }
  if (p.pdl) griddep_wait();  // weights are in flight; A may come from the previous kernel

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

  int gi = 0, ul = 0;  // item being computed
  for (int base = 0; base < items; base += kRing) {
#pragma unroll
    for (int r = 0; r < kRing; ++r) {
      if (base + r < items) {  // block-uniform
        if (pf_gi < my_groups)
          skinny_load<kScaleAfter, kZP, kFast>(p, pf, u0 + pf_ul * ustride, pf_ul * ustride, t,
                                               ring[(r + kRing - 1) % kRing]);
        if (++pf_ul == upw) {
          pf_ul = 0;
          ++pf_gi;
          pf = skinny_cols(p, blockIdx.x + (int64_t)pf_gi * gridDim.x, g, t, u0);
        }
        const int u = u0 + ul * ustride;
        const int kc = u * 128 + t * 32;
        if (u * 128 < k) {  // warp-uniform (mma.sync needs the whole warp): unit not past K
          if (kc + 128 * ustride < k) {
#pragma unroll
            for (int j = 0; j < NT; ++j) prefetch_l1(arow[j] + kc + 128 * ustride);  // next unit's activations
          }
          if (p.skinny_cfg & 8) {  // diagnostic: stream the weights only, no dequant / mma
            acc[0][0] += __uint_as_float((ring[r].w0.x ^ ring[r].w0.y ^ ring[r].w0.z ^ ring[r].w0.w ^ ring[r].w1.x ^
                                          ring[r].w1.y ^ ring[r].w1.z ^ ring[r].w1.w ^ ring[r].s0[0]) &
                                         0x3FFFFFu);
          } else {
            skinny_compute<NT, kScaleAfter, kFast>(ring[r], arow, kc, k, acc);
          }
        }

        if (++ul == upw) {  // group done by every warp of the block: reduce over K slices
          const int64_t group = blockIdx.x + (int64_t)gi * gridDim.x;
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              red[warp][(j * 4 + i) * 32 + lane] = acc[j][i];
              acc[j][i] = 0.f;
            }
          __syncthreads();
          for (int e = threadIdx.x; e < NT * 4 * 32; e += kSkinnyThreads) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < kSkinnyWarps; ++w) v += red[w][e];
            const int j = e / 128, i = (e / 32) & 3, ln = e & 31;
            const int64_t col = group * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
            const int64_t row = j * 8 + 2 * (ln & 3) + (i & 1);
            if (row < p.m && col < p.n) {
              if (p.bias) v += half_bits_to_float(ldg_u16(static_cast<const uint16_t*>(p.bias) + col));
              static_cast<__half*>(p.y)[row * p.n + col] = __float2half_rn(v);
            }
          }
          __syncthreads();
          ul = 0;
          ++gi;
        }
      }
    }
  }
}


// Variant with full-line weight requests: each item is 2 units (128 bytes of each of the 16
// columns). The warp copies it into a shared-memory stage with cp.async so that 8 lanes
// cover one column's 128-byte line per instruction (whole-line requests, half as many
// requests per byte as the register ring), then each lane reads back its mma fragments
// (LDS.128; rows padded to 192 bytes: conflict-free). 16-byte-aligned rows only.
constexpr int kSmemStages = 4;    // items per warp ring; kSmemStages - 1 in flight
constexpr int kSmemRow = 192;     // bytes per column row of a stage (128 + 64 pad)
constexpr int kSmemStageBytes = 16 * kSmemRow;
constexpr int kSmemKernelBytes = kSkinnyWarps * kSmemStages * kSmemStageBytes;

template <bool kScaleAfter, bool kZP>
__device__ __forceinline__ void skinny_load_scales(const KernelParams& p, const SkinnyCols& c, int u, int t,
                                                   SkinnySlot& sl) {
  const int kc = u * 128 + t * 32;
  if (kScaleAfter) {
    const int kb = u >> (p.bs_shift - 7);
    const bool in = u < p.units;
    sl.s0[0] = in ? ldg_u16(c.s0 + kb) : 0u;
    sl.s1[0] = in ? ldg_u16(c.s1 + kb) : 0u;
    sl.z0[0] = zp_byte<kZP>(c.z0, kb, in);
    sl.z1[0] = zp_byte<kZP>(c.z1, kb, in);
    sl.zsh[0] = (kb & 1) * 4;
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kh = kc + 16 * h;
      const bool in = u < p.units && kh < (int)p.kp;
      const int kb = kh >> p.bs_shift;
      sl.s0[h] = in ? ldg_u16(c.s0 + kb) : 0u;
      sl.s1[h] = in ? ldg_u16(c.s1 + kb) : 0u;
      sl.z0[h] = zp_byte<kZP>(c.z0, kb, in);
      sl.z1[h] = zp_byte<kZP>(c.z1, kb, in);
      sl.zsh[h] = (kb & 1) * 4;
    }
  }
}

// Copy item (2 units starting at unit u) of `group` into `stage` (this lane's 4 pieces).
__device__ __forceinline__ void smem_issue(const KernelParams& p, int64_t group, int u, int lane, uint8_t* stage) {
  const int piece = lane & 7;                 // 16-byte piece of the 128-byte line
  const int kc = u * 128 + piece * 32;        // first code of the piece
  const int uu = u + (piece >> 2);
  const int kp = (int)p.kp;
  const int nbytes = uu < p.units ? (kc + 32 <= kp ? 16 : (kc + 16 <= kp ? 8 : 0)) : 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = 4 * i + (lane >> 3);
    int64_t col = group * 16 + c;
    if (col >= p.n) col = 0;
    const uint8_t* src = p.b + col * p.row_bytes + (kc >> 1);
    cp_async16(stage + c * kSmemRow + piece * 16, nbytes ? (const void*)src : (const void*)p.b, nbytes);
  }
}

template <int NT, bool kScaleAfter, bool kZP>
__global__ void __launch_bounds__(kSkinnyThreads, 2) skinny_smem_kernel(const KernelParams p) {
  extern __shared__ __align__(16) uint8_t wstage[];  // [warps][kSmemStages][16 cols][kSmemRow]
  __shared__ float red[kSkinnyWarps][NT * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int upw = p.units_per_warp;  // even
  const int ipg = upw >> 1;          // items per group per warp
  const int64_t groups = (p.n + 15) / 16;
  const int my_groups = (int)((groups - blockIdx.x + gridDim.x - 1) / gridDim.x);
  const int items = my_groups * ipg;
  const int u0 = warp * upw;
  const int k = (int)p.k;
  uint8_t* ring = wstage + warp * (kSmemStages * kSmemStageBytes);
  const uint16_t* arow[NT];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t row = (j * 8 + g) < p.m ? (j * 8 + g) : p.m - 1;
    arow[j] = static_cast<const uint16_t*>(p.a) + row * p.k;
  }

  if (p.pdl) griddep_launch_dependents();

  SkinnySlot sc[kSmemStages][2];  // scales / zero points of the items in flight (w0/w1 unused)
  int pf_gi = 0, pf_il = 0;
  int64_t pf_group = blockIdx.x;
  SkinnyCols pf = skinny_cols(p, pf_group, g, t, 0);
#pragma unroll
  for (int r = 0; r < kSmemStages - 1; ++r) {
    if (pf_gi < my_groups) {
      const int u = u0 + 2 * pf_il;
      smem_issue(p, pf_group, u, lane, ring + r * kSmemStageBytes);
      skinny_load_scales<kScaleAfter, kZP>(p, pf, u, t, sc[r][0]);
      skinny_load_scales<kScaleAfter, kZP>(p, pf, u + 1, t, sc[r][1]);
    }
    cp_async_commit();
    if (++pf_il == ipg) {
      pf_il = 0;
      ++pf_gi;
      pf_group = blockIdx.x + (int64_t)pf_gi * gridDim.x;
      pf = skinny_cols(p, pf_group, g, t, 0);
    }
  }
  if (p.pdl) griddep_wait();

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

  int gi = 0, il = 0;
  for (int base = 0; base < items; base += kSmemStages) {
#pragma unroll
    for (int r = 0; r < kSmemStages; ++r) {
      if (base + r < items) {  // block-uniform
        const int nr = (r + kSmemStages - 1) % kSmemStages;
        if (pf_gi < my_groups) {
          const int u = u0 + 2 * pf_il;
          smem_issue(p, pf_group, u, lane, ring + nr * kSmemStageBytes);
          skinny_load_scales<kScaleAfter, kZP>(p, pf, u, t, sc[nr][0]);
          skinny_load_scales<kScaleAfter, kZP>(p, pf, u + 1, t, sc[nr][1]);
        }
        cp_async_commit();
        if (++pf_il == ipg) {
          pf_il = 0;
          ++pf_gi;
          pf_group = blockIdx.x + (int64_t)pf_gi * gridDim.x;
          pf = skinny_cols(p, pf_group, g, t, 0);
        }
        cp_async_wait<kSmemStages - 1>();
        __syncwarp();  // every lane's pieces of this item are in shared memory

        const uint8_t* st = ring + r * kSmemStageBytes;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int u = u0 + 2 * il + j;
          if (u * 128 < k) {  // warp-uniform
            const int kc = u * 128 + t * 32;
            if (kc + 128 < k) {
#pragma unroll
              for (int q = 0; q < NT; ++q) prefetch_l1(arow[q] + kc + 128);
            }
            SkinnySlot sl = sc[r][j];
            sl.w0 = *reinterpret_cast<const uint4*>(st + g * kSmemRow + j * 64 + t * 16);
            sl.w1 = *reinterpret_cast<const uint4*>(st + (g + 8) * kSmemRow + j * 64 + t * 16);
            skinny_compute<NT, kScaleAfter, true>(sl, arow, kc, k, acc);
          }
        }
        __syncwarp();  // the stage is refilled two steps from now

        if (++il == ipg) {
          const int64_t group = blockIdx.x + (int64_t)gi * gridDim.x;
#pragma unroll
          for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              red[warp][(j * 4 + i) * 32 + lane] = acc[j][i];
              acc[j][i] = 0.f;
            }
          __syncthreads();
          for (int e = threadIdx.x; e < NT * 4 * 32; e += kSkinnyThreads) {
            float v = 0.f;
#pragma unroll
            for (int w = 0; w < kSkinnyWarps; ++w) v += red[w][e];
            const int j = e / 128, i = (e / 32) & 3, ln = e & 31;
            const int64_t col = group * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
            const int64_t row = j * 8 + 2 * (ln & 3) + (i & 1);
            if (row < p.m && col < p.n) {
              if (p.bias) v += half_bits_to_float(ldg_u16(static_cast<const uint16_t*>(p.bias) + col));
              static_cast<__half*>(p.y)[row * p.n + col] = __float2half_rn(v);
            }
          }
          __syncthreads();
          il = 0;
          ++gi;
        }
      }
    }
  }
  cp_async_wait<0>();
}

// ------------------------------------------------------------------------------------
// Tensor-core fp16 GEMM (any M)
// ------------------------------------------------------------------------------------
// CTA tile BM x BN x 64. A tiles and packed B tiles stream through a STAGES-deep cp.async
// ring; each k-tile the packed B tile is dequantized (scales/zero points prefetched one
// tile ahead) into one fp16 tile, then ldmatrix + mma.sync with fp32 accumulation. On sm_90
// SPLIT > 1 splits K over the CTAs of a thread-block cluster, whose partial tiles are summed
// through distributed shared memory (no global workspace).

template <int BM_, int BN_, int WM_, int WN_, int SPLIT_, int STAGES_>
struct GemmCfg {
  static constexpr int BM = BM_, BN = BN_, BK = 64, WM = WM_, WN = WN_, SPLIT = SPLIT_, STAGES = STAGES_;
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int LDS = BK + 8;  // padded row (halves): conflict-free ldmatrix
  static constexpr int WTM = BM / WM, WTN = BN / WN;
  static constexpr int MT = WTM / 16, NT = WTN / 8;
  static constexpr int kBChunks = BN * BK / 32;  // 16-byte packed chunks per k-tile
  static constexpr int kBPerThread = kBChunks / kThreads;
  static constexpr int kAStageBytes = BM * LDS * 2;
  static constexpr int kBqStageBytes = BN * BK / 2;
  static constexpr int kBhBytes = BN * LDS * 2;
  static constexpr int kPipeBytes = STAGES * (kAStageBytes + kBqStageBytes) + kBhBytes;
  static constexpr int kRedBytes = SPLIT > 1 ? BM * BN * 4 : 0;
  static constexpr int kSmemBytes = kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes;
  static_assert(MT >= 1 && NT >= 2 && NT % 2 == 0, "warp tile");
  static_assert(kBChunks % kThreads == 0 && kBPerThread >= 1, "B chunks per thread");
};

template <class C, bool kAVec>
__device__ __forceinline__ void gemm_issue_a(const KernelParams& p, uint8_t* stage, int64_t m0, int64_t k0) {
  const uint16_t* A = static_cast<const uint16_t*>(p.a);
  uint16_t* as = reinterpret_cast<uint16_t*>(stage);
  constexpr int kChunks = C::BM * C::BK / 8;
#pragma unroll
  for (int i = 0; i < (kChunks + C::kThreads - 1) / C::kThreads; ++i) {
    const int c = threadIdx.x + i * C::kThreads;
    if (kChunks % C::kThreads != 0 && c >= kChunks) break;
    const int r = c / (C::BK / 8), kq = c % (C::BK / 8);
    const int64_t gm = m0 + r, gk = k0 + kq * 8;
    uint16_t* dst = as + r * C::LDS + kq * 8;
    if (kAVec) {
      const bool ok = gm < p.m && gk < p.k;
      cp_async16(dst, ok ? (const void*)(A + gm * p.k + gk) : (const void*)A, ok ? 16 : 0);
    } else {  // K % 8 != 0: synchronous guarded loads
      uint32_t v[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t lo = (gm < p.m && gk + 2 * i < p.k) ? ldg_u16(A + gm * p.k + gk + 2 * i) : 0u;
        const uint32_t hi = (gm < p.m && gk + 2 * i + 1 < p.k) ? ldg_u16(A + gm * p.k + gk + 2 * i + 1) : 0u;
        v[i] = lo | (hi << 16);
      }
      *reinterpret_cast<uint4*>(dst) = make_uint4(v[0], v[1], v[2], v[3]);
    }
  }
}

template <class C>
__device__ __forceinline__ void gemm_issue_b(const KernelParams& p, uint8_t* stage, int64_t n0, int64_t k0) {
#pragma unroll
  for (int i = 0; i < C::kBPerThread; ++i) {
    const int c = threadIdx.x + i * C::kThreads;
    const int col = c / (C::BK / 32), kq = c % (C::BK / 32);
    const int64_t gn = n0 + col, kc = k0 + kq * 32;
    const int nbytes = gn < p.n ? chunk_bytes(kc, p.kp) : 0;
    const uint8_t* src = nbytes ? p.b + gn * p.row_bytes + (kc >> 1) : p.b;
    uint8_t* dst = stage + c * 16;
    if (p.b_vec16) {
      cp_async16_l2_256(dst, src, nbytes);
    } else {
      cp_async8(dst, src, nbytes >= 8 ? 8 : 0);
      cp_async8(dst + 8, nbytes == 16 ? src + 8 : p.b, nbytes == 16 ? 8 : 0);
    }
  }
}

struct BScale {  // as loaded; turned into half2 operands at dequant time (see SkinnySlot)
  uint32_t s[2];
  uint32_t zb[2];
  uint32_t zsh[2];
};

template <class C>
__device__ __forceinline__ void gemm_load_scales(const KernelParams& p, BScale (&bs)[C::kBPerThread], int64_t n0,
                                                 int64_t k0) {
  const uint16_t* S = static_cast<const uint16_t*>(p.s);
#pragma unroll
  for (int i = 0; i < C::kBPerThread; ++i) {
    const int c = threadIdx.x + i * C::kThreads;
    const int col = c / (C::BK / 32), kq = c % (C::BK / 32);
    const int64_t gn = n0 + col, kc = k0 + kq * 32;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t kh = kc + 16 * h;
      const bool in = gn < p.n && kh < p.kp;
      const int64_t kb = kh >> p.bs_shift;
      bs[i].s[h] = in ? ldg_u16(S + gn * p.nb + kb) : 0u;
      bs[i].zb[h] = (in && p.z) ? (uint32_t)__ldg(p.z + gn * p.zcols + (kb >> 1)) : 0x88u;
      bs[i].zsh[h] = (uint32_t)(kb & 1) * 4;
    }
  }
}

// Scales / zero points of a future k-tile into L1, so gemm_load_scales hits L1 later.
template <class C>
__device__ __forceinline__ void gemm_prefetch_scales(const KernelParams& p, int64_t n0, int64_t k0) {
#pragma unroll
  for (int i = 0; i < C::kBPerThread; ++i) {
    const int c = threadIdx.x + i * C::kThreads;
    const int col = c / (C::BK / 32), kq = c % (C::BK / 32);
    const int64_t gn = n0 + col, kc = k0 + kq * 32;
    if (gn < p.n && kc < p.kp) {
      const int64_t kb = kc >> p.bs_shift;
      prefetch_l1(static_cast<const uint16_t*>(p.s) + gn * p.nb + kb);
      if (p.z) prefetch_l1(p.z + gn * p.zcols + (kb >> 1));
    }
  }
}

template <class C>
__device__ __forceinline__ void gemm_dequant(const uint8_t* bq, const BScale (&bs)[C::kBPerThread], uint16_t* bh) {
#pragma unroll
  for (int i = 0; i < C::kBPerThread; ++i) {
    const int c = threadIdx.x + i * C::kThreads;
    const int col = c / (C::BK / 32), kq = c % (C::BK / 32);
    const uint4 wv = *reinterpret_cast<const uint4*>(bq + c * 16);
    uint16_t* dst = bh + col * C::LDS + kq * 32;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const uint32_t x = word_of(wv, w);
      const int h = w >> 1;
      const uint32_t sub = zp_sub_bits((bs[i].zb[h] >> bs[i].zsh[h]) & 0xFu);
      const uint32_t sc = bs[i].s[h] | (bs[i].s[h] << 16);
      uint4 o;
      o.x = hmul2_u32(dq_pair<0>(x, sub), sc);
      o.y = hmul2_u32(dq_pair<1>(x, sub), sc);
      o.z = hmul2_u32(dq_pair<2>(x, sub), sc);
      o.w = hmul2_u32(dq_pair<3>(x, sub), sc);
      *reinterpret_cast<uint4*>(dst + 8 * w) = o;
    }
  }
}

template <class C, bool kAVec>
__global__ void __launch_bounds__(C::kThreads) gemm_f16_kernel(const KernelParams p) {
  extern __shared__ __align__(128) uint8_t smem_raw[];
  uint8_t* a_stages = smem_raw;                                  // [STAGES][BM][LDS] halves
  uint8_t* bq_stages = smem_raw + C::STAGES * C::kAStageBytes;   // [STAGES][BN * BK/2] bytes
  uint16_t* bh = reinterpret_cast<uint16_t*>(bq_stages + C::STAGES * C::kBqStageBytes);  // [BN][LDS]

  // n-tile major: the m-tiles sharing a weight tile run side by side (one HBM read).
  const int64_t tiles_m = (p.m + C::BM - 1) / C::BM;
  const int64_t tile = (int64_t)blockIdx.x / C::SPLIT;
  const int rank = (int)(blockIdx.x % C::SPLIT);  // == cluster rank (cluster dims (SPLIT,1,1))
  const int64_t tn = tile / tiles_m, tm = tile % tiles_m;
  const int64_t m0 = tm * C::BM, n0 = tn * C::BN;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int wm = warp / C::WN, wn = warp % C::WN;
  const int g = lane >> 2, t = lane & 3;
  const int ktiles = (int)((p.k + C::BK - 1) / C::BK);
  const int per = (ktiles + C::SPLIT - 1) / C::SPLIT;
  const int kt0 = min(ktiles, rank * per), nt = min(ktiles, kt0 + per) - kt0;

  if (p.pdl) griddep_launch_dependents();

  float acc[C::MT][C::NT][4];
#pragma unroll
  for (int a = 0; a < C::MT; ++a)
#pragma unroll
    for (int b = 0; b < C::NT; ++b)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[a][b][e] = 0.f;

  // prologue: weights first (independent of earlier kernels), then A after the PDL wait
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s)
    if (s < nt) {
      gemm_prefetch_scales<C>(p, n0, (int64_t)(kt0 + s) * C::BK);
      gemm_issue_b<C>(p, bq_stages + s * C::kBqStageBytes, n0, (int64_t)(kt0 + s) * C::BK);
    }
  BScale sc_next[C::kBPerThread], sc_cur[C::kBPerThread];
  if (nt > 0) gemm_load_scales<C>(p, sc_next, n0, (int64_t)kt0 * C::BK);
  if (p.pdl) griddep_wait();
#pragma unroll
  for (int s = 0; s < C::STAGES - 1; ++s) {
    if (s < nt) gemm_issue_a<C, kAVec>(p, a_stages + s * C::kAStageBytes, m0, (int64_t)(kt0 + s) * C::BK);
    cp_async_commit();
  }

  for (int i = 0; i < nt; ++i) {
    cp_async_wait<C::STAGES - 2>();
    __syncthreads();  // tile i landed for every thread; everyone is done with tile i-1
    {
      const int j = i + C::STAGES - 1;
      if (j < nt) {
        const int st = j % C::STAGES;
        gemm_prefetch_scales<C>(p, n0, (int64_t)(kt0 + j) * C::BK);
        gemm_issue_b<C>(p, bq_stages + st * C::kBqStageBytes, n0, (int64_t)(kt0 + j) * C::BK);
        gemm_issue_a<C, kAVec>(p, a_stages + st * C::kAStageBytes, m0, (int64_t)(kt0 + j) * C::BK);
      }
      cp_async_commit();
    }
#pragma unroll
    for (int q = 0; q < C::kBPerThread; ++q) sc_cur[q] = sc_next[q];
    if (i + 1 < nt) gemm_load_scales<C>(p, sc_next, n0, (int64_t)(kt0 + i + 1) * C::BK);
    const int st = i % C::STAGES;
    gemm_dequant<C>(bq_stages + st * C::kBqStageBytes, sc_cur, bh);
    __syncthreads();

    const uint16_t* as = reinterpret_cast<const uint16_t*>(a_stages + st * C::kAStageBytes);
#pragma unroll
    for (int kk = 0; kk < C::BK; kk += 16) {
      uint32_t af[C::MT][4];
      uint32_t bf[C::NT][2];
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
        ldmatrix_x4(af[mt], as + (wm * C::WTM + mt * 16 + (lane & 15)) * C::LDS + kk + (lane >> 4) * 8);
#pragma unroll
      for (int n2 = 0; n2 < C::NT / 2; ++n2) {
        uint32_t r[4];
        ldmatrix_x4(r, bh + (wn * C::WTN + n2 * 16 + (lane & 7) + ((lane >> 4) << 3)) * C::LDS + kk +
                           ((lane >> 3) & 1) * 8);
        bf[2 * n2][0] = r[0];
        bf[2 * n2][1] = r[1];
        bf[2 * n2 + 1][0] = r[2];
        bf[2 * n2 + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
        for (int nt2 = 0; nt2 < C::NT; ++nt2)
          mma16816(acc[mt][nt2], af[mt][0], af[mt][1], af[mt][2], af[mt][3], bf[nt2][0], bf[nt2][1]);
    }
  }
  cp_async_wait<0>();

  if constexpr (C::SPLIT > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    float* red = reinterpret_cast<float*>(smem_raw);
    __syncthreads();  // pipeline buffers are free
    if (rank != 0) {
#pragma unroll
      for (int a = 0; a < C::MT; ++a)
#pragma unroll
        for (int b = 0; b < C::NT; ++b)
#pragma unroll
          for (int e = 0; e < 4; ++e) red[((a * C::NT + b) * 4 + e) * C::kThreads + threadIdx.x] = acc[a][b][e];
    }
    cluster.sync();
    if (rank == 0) {
#pragma unroll
      for (int r = 1; r < C::SPLIT; ++r) {
        const float* peer = cluster.map_shared_rank(red, r);
#pragma unroll
        for (int a = 0; a < C::MT; ++a)
#pragma unroll
          for (int b = 0; b < C::NT; ++b)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[a][b][e] += peer[((a * C::NT + b) * 4 + e) * C::kThreads + threadIdx.x];
      }
    }
    cluster.sync();  // peers' shared memory must outlive rank 0's reads
    if (rank != 0) return;
#else
    __trap();  // split configurations are launched on sm_90 only
#endif
  }

  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  __half* Y = static_cast<__half*>(p.y);
#pragma unroll
  for (int mt = 0; mt < C::MT; ++mt)
#pragma unroll
    for (int nt2 = 0; nt2 < C::NT; ++nt2)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = m0 + wm * C::WTM + mt * 16 + g + (e >= 2 ? 8 : 0);
        const int64_t col = n0 + wn * C::WTN + nt2 * 8 + 2 * t + (e & 1);
        if (row < p.m && col < p.n) {
          float v = acc[mt][nt2][e];
          if (bias) v += half_bits_to_float(ldg_u16(bias + col));
          Y[row * p.n + col] = __float2half_rn(v);
        }
      }
}

// GEMM configurations (index = MatMulArgs::config for Path::kTensorCore).
//                      BM   BN  WM WN SPLIT STAGES
using Gemm0 = GemmCfg<64, 64, 2, 2, 1, 4>;    // 128 threads, warp 32x32
using Gemm1 = GemmCfg<64, 64, 2, 2, 2, 4>;    //   + 2-way cluster split-K (sm_90)
using Gemm2 = GemmCfg<64, 64, 2, 2, 4, 4>;    //   + 4-way
using Gemm3 = GemmCfg<128, 128, 2, 4, 1, 3>;  // 256 threads, warp 64x32
using Gemm4 = GemmCfg<128, 128, 2, 4, 2, 3>;  //   + 2-way
using Gemm5 = GemmCfg<128, 64, 2, 2, 2, 4>;   // 128 threads, warp 64x32, 2-way
using Gemm6 = GemmCfg<32, 64, 1, 4, 4, 4>;    // 128 threads, warp 32x16, 4-way
using Gemm7 = GemmCfg<64, 128, 2, 4, 2, 4>;   // 256 threads, warp 32x32, 2-way
constexpr int kNumGemmConfigs = 8;

// ------------------------------------------------------------------------------------
// SIMT fp32 kernel (any M): exact fp32 dequant, FFMA
// ------------------------------------------------------------------------------------

constexpr int kSimtRows = 4;
constexpr int kSimtWarps = 8;

template <bool kAVec>
__global__ void __launch_bounds__(kSimtWarps * 32) simt_f32_kernel(const KernelParams p) {
  const float* __restrict__ A = static_cast<const float*>(p.a);
  const float* __restrict__ S = static_cast<const float*>(p.s);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t cb = (int64_t)blockIdx.x % p.tiles_n, rg = (int64_t)blockIdx.x / p.tiles_n;
  const int64_t col = cb * kSimtWarps + warp;
  const int64_t r0 = rg * kSimtRows;
  if (p.pdl) griddep_launch_dependents();
  if (p.pdl) griddep_wait();
  if (col >= p.n) return;  // warp-uniform; no block-level sync follows
  const uint8_t* row = p.b + col * p.row_bytes;
  const bool vec16 = p.b_vec16 != 0;

  float acc[kSimtRows];
#pragma unroll
  for (int r = 0; r < kSimtRows; ++r) acc[r] = 0.f;

  const int64_t nchunks = (p.k + 31) / 32;  // chunks past K contribute nothing
  for (int64_t ch = lane; ch < nchunks; ch += 32) {
    const int64_t kc = ch * 32;
    const uint4 wv = load_wchunk(row, kc, chunk_bytes(kc, p.kp), vec16);
    float w[32];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t kh = kc + 16 * h;
      const bool in = kh < p.kp;
      const int64_t kb = kh >> p.bs_shift;
      const float z = in ? (float)zero_point(p.z, col, p.zcols, kb) : 0.f;
      const float s = in ? __ldg(S + col * p.nb + kb) : 0.f;
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const uint32_t x = word_of(wv, 2 * h + q);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float code = (float)((x >> (4 * e)) & 0xFu);
          w[16 * h + 8 * q + e] = (code - z) * s;  // same arithmetic as formats.dequantize
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kSimtRows; ++r) {
      const int64_t m = r0 + r;
      if (m >= p.m) break;
      const float* a = A + m * p.k + kc;
      float s = acc[r];
      if (kAVec && kc + 32 <= p.k) {
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          const float4 v = __ldg(reinterpret_cast<const float4*>(a) + q);
          s = fmaf(v.x, w[4 * q + 0], s);
          s = fmaf(v.y, w[4 * q + 1], s);
          s = fmaf(v.z, w[4 * q + 2], s);
          s = fmaf(v.w, w[4 * q + 3], s);
        }
      } else {
#pragma unroll
        for (int e = 0; e < 32; ++e)
          if (kc + e < p.k) s = fmaf(__ldg(a + e), w[e], s);
      }
      acc[r] = s;
    }
  }
#pragma unroll
  for (int r = 0; r < kSimtRows; ++r) {
    float v = acc[r];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    acc[r] = v;
  }
  if (lane < kSimtRows) {
    float v = acc[0];
#pragma unroll
    for (int r = 1; r < kSimtRows; ++r)
      if (lane == r) v = acc[r];
    const int64_t m = r0 + lane;
    if (m < p.m) {
      if (p.bias) v += static_cast<const float*>(p.bias)[col];
      static_cast<float*>(p.y)[m * p.n + col] = v;
    }
  }
}

// ------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------

int Fail(char* err, size_t len, int code, const char* fmt, ...) {
  if (err != nullptr && len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, len, fmt, ap);
    va_end(ap);
  }
  return code;
}

struct DeviceInfo {
  int sms = 0;
  int major = 0;
};

int GetDeviceInfo(DeviceInfo* info, char* err, size_t len) {
  static std::atomic<int> cached_sms[64];
  static std::atomic<int> cached_major[64];
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return Fail(err, len, kCudaError, "cudaGetDevice: %s", cudaGetErrorString(e));
  if (dev >= 0 && dev < 64 && cached_sms[dev].load(std::memory_order_relaxed) > 0) {
    info->sms = cached_sms[dev].load(std::memory_order_relaxed);
    info->major = cached_major[dev].load(std::memory_order_relaxed);
    return kOk;
  }
  e = cudaDeviceGetAttribute(&info->sms, cudaDevAttrMultiProcessorCount, dev);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&info->major, cudaDevAttrComputeCapabilityMajor, dev);
  if (e != cudaSuccess) return Fail(err, len, kCudaError, "cudaDeviceGetAttribute: %s", cudaGetErrorString(e));
  if (dev >= 0 && dev < 64) {
    cached_major[dev].store(info->major, std::memory_order_relaxed);
    cached_sms[dev].store(info->sms, std::memory_order_relaxed);
  }
  return kOk;
}

// Raise a kernel's dynamic shared-memory limit once per device.
int EnsureSmem(const void* func, int bytes, std::atomic<uint64_t>* done_mask, char* err, size_t len) {
  if (bytes <= 48 * 1024) return kOk;
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return Fail(err, len, kCudaError, "cudaGetDevice: %s", cudaGetErrorString(e));
  const uint64_t bit = 1ull << (dev & 63);
  if (done_mask->load(std::memory_order_acquire) & bit) return kOk;
  e = cudaFuncSetAttribute(func, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess)
    return Fail(err, len, kCudaError, "cudaFuncSetAttribute(%d bytes of shared memory): %s", bytes,
                cudaGetErrorString(e));
  done_mask->fetch_or(bit, std::memory_order_acq_rel);
  return kOk;
}

template <typename Kernel>
int Launch(Kernel kernel, dim3 grid, dim3 block, int smem, cudaStream_t stream, bool pdl, int cluster_x,
           const KernelParams& p, char* err, size_t len) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = static_cast<size_t>(smem);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (pdl) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  if (cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = static_cast<unsigned>(cluster_x);
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  cfg.attrs = n ? attr : nullptr;
  cfg.numAttrs = n;
  cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, p);
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess) return Fail(err, len, kCudaError, "kernel launch failed: %s", cudaGetErrorString(e));
  return kOk;
}

template <class C>
int LaunchGemm(const KernelParams& p, bool a_vec, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
               size_t len) {
  static std::atomic<uint64_t> smem_done[2];
  if (C::SPLIT > 1 && dev.major < 9)
    return Fail(err, len, kInvalidArgument, "tensor-core config with cluster split-K needs sm_90");
  const int64_t tiles = ((p.m + C::BM - 1) / C::BM) * ((p.n + C::BN - 1) / C::BN) * C::SPLIT;
  if (tiles > 0x7fffffffLL) return Fail(err, len, kInvalidArgument, "problem too large: %lld tiles", (long long)tiles);
  const dim3 grid(static_cast<unsigned>(tiles)), block(C::kThreads);
  auto k = a_vec ? gemm_f16_kernel<C, true> : gemm_f16_kernel<C, false>;
  int rc = EnsureSmem(reinterpret_cast<const void*>(k), C::kSmemBytes, &smem_done[a_vec ? 1 : 0], err, len);
  if (rc != kOk) return rc;
  return Launch(k, grid, block, C::kSmemBytes, stream, pdl, C::SPLIT, p, err, len);
}

// Tensor-core configuration for M > 16 (tuned on H100; sm_80 gets the split-free ones).
int ChooseGemmConfig(int64_t m, int64_t n, const DeviceInfo& dev) {
  const bool hopper = dev.major >= 9;
  auto ctas = [&](int bm, int bn) { return ((m + bm - 1) / bm) * ((n + bn - 1) / bn); };
  if (!hopper) return (m > 64 && ctas(128, 128) >= dev.sms) ? 3 : 0;
  if (m <= 32) return 6;
  if (m <= 128) return ctas(64, 64) * 2 >= 2 * dev.sms ? 1 : 2;
  return 5;
}

// Resident blocks per SM of a kernel (once per device and kernel).
template <typename Kernel>
int BlocksPerSm(Kernel kernel, int threads, std::atomic<int>* cache, int dyn_smem = 0) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) dev = 0;
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v > 0) return v;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, kernel, threads, dyn_smem) != cudaSuccess || v < 1) v = 1;
  cache[dev].store(v, std::memory_order_relaxed);
  return v;
}

template <int NT, bool kScaleAfter, bool kZP, bool kFast>
int LaunchSkinny3(const KernelParams& p, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err, size_t len) {
  static std::atomic<int> occ[64];
  auto k = skinny_f16_kernel<NT, kScaleAfter, kZP, kFast>;
  const int per_sm = BlocksPerSm(k, kSkinnyThreads, occ);
  const int64_t groups = (p.n + 15) / 16;
  const int64_t resident = (int64_t)per_sm * dev.sms;
  const int64_t blocks = groups < resident ? groups : resident;  // persistent grid
  return Launch(k, dim3(static_cast<unsigned>(blocks)), dim3(kSkinnyThreads), 0, stream, pdl, 1, p, err, len);
}

template <int NT, bool kScaleAfter, bool kZP>
int LaunchSkinnySmem(KernelParams p, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err, size_t len) {
  static std::atomic<int> occ[64];
  static std::atomic<uint64_t> smem_done;
  p.units_per_warp += p.units_per_warp & 1;  // whole 2-unit items
  auto k = skinny_smem_kernel<NT, kScaleAfter, kZP>;
  int rc = EnsureSmem(reinterpret_cast<const void*>(k), kSmemKernelBytes, &smem_done, err, len);
  if (rc != kOk) return rc;
  const int per_sm = BlocksPerSm(k, kSkinnyThreads, occ, kSmemKernelBytes);
  const int64_t groups = (p.n + 15) / 16;
  const int64_t resident = (int64_t)per_sm * dev.sms;
  const int64_t blocks = groups < resident ? groups : resident;
  return Launch(k, dim3(static_cast<unsigned>(blocks)), dim3(kSkinnyThreads), kSmemKernelBytes, stream, pdl, 1, p,
                err, len);
}

template <int NT, bool kScaleAfter>
int LaunchSkinny2(const KernelParams& p, bool fast, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
                  size_t len) {
  // Shared-memory whole-line staging (cfg bit 2) measured faster on H100 for M <= 8 with
  // bs % 128 == 0, the register ring otherwise (bench/results/cuda_int4.json).
  if (fast && (p.skinny_cfg & 4))
    return p.z != nullptr ? LaunchSkinnySmem<NT, kScaleAfter, true>(p, dev, stream, pdl, err, len)
                          : LaunchSkinnySmem<NT, kScaleAfter, false>(p, dev, stream, pdl, err, len);
  if (p.z != nullptr)
    return fast ? LaunchSkinny3<NT, kScaleAfter, true, true>(p, dev, stream, pdl, err, len)
                : LaunchSkinny3<NT, kScaleAfter, true, false>(p, dev, stream, pdl, err, len);
  return fast ? LaunchSkinny3<NT, kScaleAfter, false, true>(p, dev, stream, pdl, err, len)
              : LaunchSkinny3<NT, kScaleAfter, false, false>(p, dev, stream, pdl, err, len);
}

int LaunchSkinny(KernelParams p, bool a_vec, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
                 size_t len) {
  p.units = static_cast<int>((p.kp + 127) / 128);
  p.units_full = static_cast<int>(p.kp / 128);
  p.units_per_warp = (p.units + kSkinnyWarps - 1) / kSkinnyWarps;
  const bool fast = a_vec && p.b_vec16;  // 16-byte loads of A rows and of B rows
  const bool scale_after = (p.bs % 128) == 0;
  if (p.m <= 8) {
    return scale_after ? LaunchSkinny2<1, true>(p, fast, dev, stream, pdl, err, len)
                       : LaunchSkinny2<1, false>(p, fast, dev, stream, pdl, err, len);
  }
  return scale_after ? LaunchSkinny2<2, true>(p, fast, dev, stream, pdl, err, len)
                     : LaunchSkinny2<2, false>(p, fast, dev, stream, pdl, err, len);
}

}  // namespace

Path ChoosePath(DType dtype, int64_t m, int64_t /*k*/, int64_t /*n*/, int64_t /*block_size*/) {
  if (dtype == DType::kFloat32) return Path::kSimt;
  return m <= 16 ? Path::kSkinny : Path::kTensorCore;
}

int LaunchMatMulBlockInt4(const MatMulArgs& args, void* stream_ptr, char* err, size_t len) {
  if (err != nullptr && len > 0) err[0] = '\0';
  const int64_t m = args.m, k = args.k, n = args.n, bs = args.block_size;
  if (args.dtype != DType::kFloat32 && args.dtype != DType::kFloat16)
    return Fail(err, len, kInvalidArgument, "A must be float or float16");
  if (!IsSupportedBlockSize(bs))
    return Fail(err, len, kInvalidArgument, "block_size %lld is not supported (16, 32, 64, 128, 256)", (long long)bs);
  constexpr int64_t kMaxDim = (int64_t(1) << 31) - 512;  // padded K stays a valid int
  if (k < 1 || n < 1 || m < 0 || k >= kMaxDim || n >= kMaxDim || m >= kMaxDim)
    return Fail(err, len, kInvalidArgument, "invalid sizes M=%lld K=%lld N=%lld", (long long)m, (long long)k,
                (long long)n);
  if (m == 0) return kOk;
  if (args.a == nullptr || args.b == nullptr || args.scales == nullptr || args.y == nullptr)
    return Fail(err, len, kInvalidArgument, "A, B, scales and Y must be non-null");

  const int64_t nb = NumBlocks(k, bs);
  const int64_t row_bytes = nb * BytesPerBlock(bs);
  const size_t elem = args.dtype == DType::kFloat16 ? 2 : 4;
  const auto addr = [](const void* q) { return reinterpret_cast<uintptr_t>(q); };
  if (addr(args.b) % 8 != 0) return Fail(err, len, kInvalidArgument, "B must be 8-byte aligned");
  if (addr(args.a) % elem || addr(args.scales) % elem || addr(args.y) % elem ||
      (args.bias != nullptr && addr(args.bias) % elem))
    return Fail(err, len, kInvalidArgument, "A, scales, bias and Y must be aligned to their element size");

  KernelParams p = {};
  p.a = args.a;
  p.b = args.b;
  p.s = args.scales;
  p.z = args.zero_points;
  p.bias = args.bias;
  p.y = args.y;
  p.m = m;
  p.k = k;
  p.n = n;
  p.bs = bs;
  p.bs_shift = 0;
  while ((int64_t(1) << p.bs_shift) < bs) ++p.bs_shift;
  p.nb = nb;
  p.kp = nb * bs;
  p.row_bytes = row_bytes;
  p.zcols = ZeroPointCols(nb);
  p.b_vec16 = (addr(args.b) % 16 == 0 && row_bytes % 16 == 0) ? 1 : 0;

  DeviceInfo dev;
  int rc = GetDeviceInfo(&dev, err, len);
  if (rc != kOk) return rc;
  const bool pdl = args.pdl && dev.major >= 9;
  p.pdl = pdl ? 1 : 0;
  cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);

  Path path = args.path == Path::kAuto ? ChoosePath(args.dtype, m, k, n, bs) : args.path;
  if (args.dtype == DType::kFloat32) {
    if (path != Path::kSimt) return Fail(err, len, kInvalidArgument, "float32 A runs on the SIMT path only");
    const bool a_vec = addr(args.a) % 16 == 0 && k % 4 == 0;
    p.tiles_n = static_cast<int>((n + kSimtWarps - 1) / kSimtWarps);
    const int64_t blocks = p.tiles_n * ((m + kSimtRows - 1) / kSimtRows);
    if (blocks > 0x7fffffffLL) return Fail(err, len, kInvalidArgument, "problem too large");
    const dim3 grid(static_cast<unsigned>(blocks)), block(kSimtWarps * 32);
    return a_vec ? Launch(simt_f32_kernel<true>, grid, block, 0, stream, pdl, 1, p, err, len)
                 : Launch(simt_f32_kernel<false>, grid, block, 0, stream, pdl, 1, p, err, len);
  }

  const bool a_vec = addr(args.a) % 16 == 0 && k % 8 == 0;
  if (path == Path::kSkinny) {
    if (m > 16) return Fail(err, len, kInvalidArgument, "the skinny path takes M <= 16, got M=%lld", (long long)m);
    if (args.config > 31) return Fail(err, len, kInvalidArgument, "unknown skinny config %d (0..31)", args.config);
    p.skinny_cfg = args.config >= 0 ? args.config : ((m <= 8 && bs % 128 == 0) ? 4 : kSkinnyDefaultCfg);
    return LaunchSkinny(p, a_vec, dev, stream, pdl, err, len);
  }
  if (path != Path::kTensorCore) return Fail(err, len, kInvalidArgument, "float16 A runs on the skinny or tensor-core path");
  int cfg = args.config;
  if (cfg < 0) cfg = ChooseGemmConfig(m, n, dev);
  switch (cfg) {
    case 0: return LaunchGemm<Gemm0>(p, a_vec, dev, stream, pdl, err, len);
    case 1: return LaunchGemm<Gemm1>(p, a_vec, dev, stream, pdl, err, len);
    case 2: return LaunchGemm<Gemm2>(p, a_vec, dev, stream, pdl, err, len);
    case 3: return LaunchGemm<Gemm3>(p, a_vec, dev, stream, pdl, err, len);
    case 4: return LaunchGemm<Gemm4>(p, a_vec, dev, stream, pdl, err, len);
    case 5: return LaunchGemm<Gemm5>(p, a_vec, dev, stream, pdl, err, len);
    case 6: return LaunchGemm<Gemm6>(p, a_vec, dev, stream, pdl, err, len);
    case 7: return LaunchGemm<Gemm7>(p, a_vec, dev, stream, pdl, err, len);
    default: return Fail(err, len, kInvalidArgument, "unknown tensor-core config %d (0..%d)", cfg, kNumGemmConfigs - 1);
  }
}

}  // namespace cuda
}  // namespace onnxq
