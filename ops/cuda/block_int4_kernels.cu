// CUDA kernels for com.onnxq MatMulBlockInt4: Y = A @ dequant(B) (+ bias).
//
// Four kernel families (see block_int4_cuda.h for the layout):
//  * skinny_f16: fp16 A, M <= 16. Each warp owns 16 output columns and a contiguous range
//    of 128-k "units". A lane (g = lane/4, t = lane%4) loads 16 bytes (32 codes) of column
//    g and of column g+8 per unit, dequantizes them in registers straight into the A
//    fragment of mma.m16n8k16 (weights as the 16-row operand, activations as the 8-column
//    operand), so B never touches shared memory. The k order inside a unit is permuted
//    (logical k 16s+2t+e -> actual 32t+4s+e, 16s+8+2t+e -> 32t+4s+2+e) identically for
//    both operands, which makes the activation fragment a plain contiguous 16-byte load.
//    Warps of a block split K; one shared-memory reduction at the end. Two drivers: the
//    one-shot burst kernel (default; one CTA per 16 columns, every weight load of a batch in
//    flight before any math) and the older persistent register-ring / smem-staging kernels.
//  * gemm_f16: fp16 A, any M (M > 16 off sm_90). CTA tile BM x BN x 64; A via cp.async,
//    B loaded as packed bytes into registers one k-tile ahead, dequantized to fp16 into
//    shared memory; ldmatrix + mma.sync m16n8k16 with fp32 accumulation.
//  * wgmma_f16: fp16 A, any M, sm_90a: dequantized weights are the register operand of warpgroup
//    MMA, activations the shared-memory operand (see its section; configs 0..9, superseded).
//  * wgmma_ws: the same math, warp-specialized (producer warpgroup with TMA / cp.async and an
//    mbarrier ring, two consumer warpgroups); default for M > 16 on sm_90 (configs 10..32; 32 =
//    stream-K over a caller workspace).
//  * simt_f32: fp32 A, any M. Exact fp32 dequant ((code - zp) * scale, one rounding, the
//    same arithmetic as onnxq.formats) and fp32 FMA on CUDA cores.
//
// fp16 dequant trick: a nibble c OR'ed into the mantissa of 1024.0h gives 1024 + c exactly;
// a nibble in bits 4..7 gives 1024 + 16c. One fma.f16x2 with (1, 1/16) and
// (-(1024+z), -(64+z)) yields the exact integers (c0 - z, c1 - z).

#include <cooperative_groups.h>
#include <cuda.h>  // CUtensorMap (types only; the encoder comes through cudaGetDriverEntryPointByVersion)
#include <cudaTypedefs.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>

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
                           // bit 3: DIAGNOSTIC stream-only (no math, wrong Y), benchmarks only;
                           // bit 5: one-shot burst kernel (bits 1, 4 apply, 0 and 2 unused);
                           // bit 6: unused (was a cp.async.bulk variant, see ops/cuda/NOTES.md);
                           // bit 7: burst kernel reads A from a shared-memory copy (bs % 128 == 0:
                           //        permuted, with the lean dequant of skinny_compute_perm);
                           // bit 8: one-shot burst kernel with 16 warps per CTA (2 units per batch);
                           // bit 9: DIAGNOSTIC (with bits 5+7, bs % 128 == 0): no activation staging, wrong Y
  // tiling (gemm / simt)
  int tiles_n;
  int wg_diag;             // DIAGNOSTIC (warp-specialized wgmma, benchmarks only, wrong Y): bit 0 no scale
                           // loads (config + 100); bit 1: unswizzled weight tile as before 2026-11-25
                           // (config + 200; Y correct, for A/B timing of the swizzle); stream-K configs:
                           // bit 2 no partial-tile exchange (config + 400), bit 4 A tiles loaded only
                           // into the first STAGES stages, later stages reuse them (config + 1600)
  // stream-K (warp-specialized SK configs): sk_ctas CTAs split the tiles x k-tiles units evenly;
  // partial tiles go through sk_ws (one BT x BN fp32 slot per CTA) and sk_flags (one per CTA)
  float* sk_ws;
  int* sk_flags;
  int sk_ctas;
  int64_t sk_ws_bytes;     // bytes at sk_ws (0: no workspace, the SK configs run their Base)
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
// Default skinny configs (KernelParams::skinny_cfg), measured on H100 (bench/results/cuda_int4.json):
// the one-shot burst kernel, activations from global memory; 16 warps per CTA for M <= 8 with
// bs % 128 == 0, else 8 (two token tiles or per-16-k scales need the registers).
constexpr int kSkinnyDefaultCfg = 32 | 256;
constexpr int kSkinnyDefaultCfgNT2 = 32;

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

// Activation fragment from a shared-memory stage (rows zero-padded past K, 16-byte aligned).
__device__ __forceinline__ void load_act_smem(const uint16_t* a, uint32_t (&f)[16]) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const uint4 v = reinterpret_cast<const uint4*>(a)[q];
    f[4 * q + 0] = v.x;
    f[4 * q + 1] = v.y;
    f[4 * q + 2] = v.z;
    f[4 * q + 3] = v.w;
  }
}

// acc += (chain 0 + chain 1) * the slot's block scale: s0 for the rows of the fragment's
// first 8 columns (elements 0, 1), s1 for the second 8 (elements 2, 3).
template <int NT>
__device__ __forceinline__ void add_scaled_chains(const float (&tmp)[2][NT][4], const SkinnySlot& sl,
                                                  float (&acc)[NT][4]) {
  const float fs0 = half_bits_to_float(sl.s0[0]), fs1 = half_bits_to_float(sl.s1[0]);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    acc[j][0] = fmaf(tmp[0][j][0] + tmp[1][j][0], fs0, acc[j][0]);
    acc[j][1] = fmaf(tmp[0][j][1] + tmp[1][j][1], fs0, acc[j][1]);
    acc[j][2] = fmaf(tmp[0][j][2] + tmp[1][j][2], fs1, acc[j][2]);
    acc[j][3] = fmaf(tmp[0][j][3] + tmp[1][j][3], fs1, acc[j][3]);
  }
}

// kSmemAct: arow points into a shared-memory copy of A (stage_act_smem), else into global A.
template <int NT, bool kScaleAfter, bool kFast, bool kSmemAct = false>
__device__ __forceinline__ void skinny_compute(const SkinnySlot& sl, const uint16_t* const (&arow)[NT], int kc,
                                               int k, float (&acc)[NT][4]) {
  uint32_t af[NT][16];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    if (kSmemAct)
      load_act_smem(arow[j] + kc, af[j]);
    else
      load_act<kFast>(arow[j] + kc, kc, k, af[j]);
  }

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
    add_scaled_chains<NT>(tmp, sl, acc);
  } else {
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[j][e] += tmp[0][j][e] + tmp[1][j][e];
  }
}

// Sum the per-warp mma.m16n8k16 accumulators of one 16-column group (staged in `red`,
// [warps][NT * 4 * 32]) and store the group's rows (+ bias) as fp16. All `nthreads`
// threads of the block take part; the caller synchronises before and after.
template <int NT, int WARPS>
__device__ __forceinline__ void reduce_store_group(float (*red)[NT * 4 * 32], const KernelParams& p,
                                                   int64_t group, int nthreads) {
  for (int e = threadIdx.x; e < NT * 4 * 32; e += nthreads) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) v += red[w][e];
    const int j = e / 128, i = (e / 32) & 3, ln = e & 31;
    const int64_t col = group * 16 + (ln >> 2) + (i >= 2 ? 8 : 0);
    const int64_t row = j * 8 + 2 * (ln & 3) + (i & 1);
    if (row < p.m && col < p.n) {
      if (p.bias) v += half_bits_to_float(ldg_u16(static_cast<const uint16_t*>(p.bias) + col));
      static_cast<__half*>(p.y)[row * p.n + col] = __float2half_rn(v);
    }
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
          reduce_store_group<NT, kSkinnyWarps>(red, p, group, kSkinnyThreads);
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
          reduce_store_group<NT, kSkinnyWarps>(red, p, group, kSkinnyThreads);
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
// Skinny fp16 kernel, one-shot ("burst") variant (skinny_cfg bit 5; default for fp16 M <= 16)
// ------------------------------------------------------------------------------------
// At decode sizes a layer is only ~65-170 KB of weights per SM, so the kernel is bound by
// memory latency and instruction issue, not by a steady-state stream: no persistent loop and
// no register ring. One CTA per 16-column group (the grid covers the layer exactly once);
// its 8 (or 16) warps split K. A warp issues the weight and scale loads of a whole batch of
// kBurstUnits (or half) 128-k units (8 x 16 B per lane) before any math, then dequantizes +
// mma's the batch; at 2 CTAs per SM that is ~64 KB per SM in flight, the whole share of a
// 4096 x 4096 layer. Under PDL the first batch's weight loads go out before
// griddepcontrol.wait (the activations may still be being written by the previous kernel).
// Same fragment math as the persistent kernel (skinny_load / skinny_compute), or with bit 7
// and bs % 128 == 0 the lean one (skinny_compute_perm). Measured: ops/cuda/NOTES.md.
constexpr int kBurstUnits = 4;  // 8 warps and NT == 1; else half (registers)

// Rows [0, rows) of A into shared memory [rows][stride] halves, zero past K up to kpad
// (kpad % 8 == 0, K % 8 == 0, A 16-byte aligned), by all threads of the CTA; the caller syncs.
__device__ __forceinline__ void stage_act_smem(const KernelParams& p, int rows, int kpad, int stride, uint16_t* dst) {
  const int per_row = kpad >> 3;  // 16-byte chunks
  const int total = rows * per_row;
  const int k = (int)p.k;
  const uint16_t* a = static_cast<const uint16_t*>(p.a);
  const int nthr = (int)blockDim.x;
  for (int e0 = threadIdx.x; e0 < total; e0 += 4 * nthr) {
    uint4 v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {  // four loads in flight per thread
      const int e = e0 + i * nthr;
      const int r = e / per_row, c = (e - r * per_row) << 3;
      v[i] = make_uint4(0u, 0u, 0u, 0u);
      if (e < total && c < k) v[i] = __ldg(reinterpret_cast<const uint4*>(a + (int64_t)r * p.k + c));
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int e = e0 + i * nthr;
      const int r = e / per_row, c = (e - r * per_row) << 3;
      if (e < total) *reinterpret_cast<uint4*>(dst + r * stride + c) = v[i];
    }
  }
}

// Shared-memory activation stage of the one-shot kernels: rows actually read (lanes past M
// read row M-1) x (units * 128 + 8) halves (the pad staggers rows over the banks).
__host__ __device__ inline int act_stage_rows(int64_t m, int nt) { return (int)(m < 8 * nt ? m : 8 * nt); }
__host__ __device__ inline int act_stage_stride(int units) { return units * 128 + 8; }

// Lean dequant for the one-shot kernel with shared-memory activations and bs % 128 == 0
// (skinny_compute_perm). Per 32-bit word of 8 codes c0..c7 it spends 4 lop3 + 1 shift and
// no fp16 arithmetic: lop3(x, 0x000F000F, 0x6400'6400) is the half2 (1024 + c0, 1024 + c4)
// exactly, lop3(x, 0x00F000F0, ..) is (1024 + 16 c1, 1024 + 16 c5), and x >> 8 gives c2/c6,
// c3/c7 the same way. The activations are staged to match: every 8 k (a0..a7) become the
// words (a0, a4), (a1, a5) / 16, (a2, a6), (a3, a7) / 16, so the mma sees
//   sum_k a_k c_k + 1024 * S1,   S1 = the sum of the staged values of the unit,
// and the zero point and the 1024 offset come off once per (unit, token) in fp32:
//   sum_k a_k (c_k - z) = mma - 1024 * S1 - z * S2,   S2 = sum of a_k as the mma sees them.
// The staging computes (-1024 S1, -S2) per (unit, row) into `corr` [units][rows]; the first
// mma chain starts from the correction instead of zero. fp32 error: |mma| ~ 1024 |S1| and
// one fp32 rounding there is ~1e-7 of it, far below the fp16 output rounding.
constexpr uint32_t kQuarterHalf2 = 0x2C002C00u;  // half2(1/16, 1/16)

__device__ __forceinline__ float2 half2_bits_to_float2(uint32_t h) {
  return __half22float2(*reinterpret_cast<const __half2*>(&h));
}

// Staging in two steps so that the copies are in flight while the weights stream in:
// stage_act_issue puts every 16-byte chunk of rows [0, rows) x [0, units * 128) of A in flight
// with cp.async (zero-filled past K: no registers held), stage_act_perm then waits for them,
// permutes each chunk in place and writes the per-(unit, row) corrections. Both are called by
// every thread of the CTA; stage_act_perm ends with the stage visible to the whole CTA.
__device__ __forceinline__ void stage_act_issue(const KernelParams& p, int rows, int units, int stride,
                                                uint16_t* dst) {
  const int per_row = units * 16;  // 16-byte chunks (8 k)
  const int total = rows * per_row;
  const int k = (int)p.k;
  const uint16_t* a = static_cast<const uint16_t*>(p.a);
  for (int e = threadIdx.x; e < total; e += blockDim.x) {
    const int r = e / per_row, c = (e - r * per_row) << 3;
    cp_async16(dst + r * stride + c, c < k ? (const void*)(a + (int64_t)r * p.k + c) : (const void*)a, c < k ? 16 : 0);
  }
  cp_async_commit();
}

__device__ __forceinline__ void stage_act_perm(int rows, int units, int stride, uint16_t* dst, float2* corr) {
  const int per_row = units * 16;
  const int total = rows * per_row;
  cp_async_wait<0>();
  __syncthreads();
  for (int e0 = 0; e0 < total; e0 += blockDim.x) {  // block-uniform trip count (shuffles below)
    const int e = e0 + (int)threadIdx.x;
    const int r = e / per_row, c = e - r * per_row;
    uint4* q = reinterpret_cast<uint4*>(dst + r * stride + (c << 3));
    const uint4 v = e < total ? *q : make_uint4(0u, 0u, 0u, 0u);
    uint4 o;
    o.x = __byte_perm(v.x, v.z, 0x5410);
    o.y = hmul2_u32(__byte_perm(v.x, v.z, 0x7632), kQuarterHalf2);
    o.z = __byte_perm(v.y, v.w, 0x5410);
    o.w = hmul2_u32(__byte_perm(v.y, v.w, 0x7632), kQuarterHalf2);
    if (e < total) *q = o;  // in place: each chunk is read and written by one thread
    const float2 f0 = half2_bits_to_float2(o.x), f1 = half2_bits_to_float2(o.y);
    const float2 f2 = half2_bits_to_float2(o.z), f3 = half2_bits_to_float2(o.w);
    const float lo = (f0.x + f0.y) + (f2.x + f2.y), hi = (f1.x + f1.y) + (f3.x + f3.y);
    float s1 = lo + hi, s2 = fmaf(16.f, hi, lo);
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) {  // the 16 chunks of one unit of one row: 16 aligned lanes
      s1 += __shfl_xor_sync(0xffffffffu, s1, off);
      s2 += __shfl_xor_sync(0xffffffffu, s2, off);
    }
    if (e < total && (threadIdx.x & 15) == 0) corr[(c >> 4) * rows + r] = make_float2(-1024.f * s1, -s2);
  }
  __syncthreads();
}

template <int NT, bool kZP>
__device__ __forceinline__ void skinny_compute_perm(const SkinnySlot& sl, const uint16_t* const (&arow)[NT],
                                                    const float2* const (&crow)[NT][2], int u, int kc,
                                                    float (&acc)[NT][4]) {
  uint32_t af[NT][16];
#pragma unroll
  for (int j = 0; j < NT; ++j) load_act_smem(arow[j] + kc, af[j]);
  const float z0 = kZP ? (float)((sl.z0[0] >> sl.zsh[0]) & 0xFu) : (float)kSymmetricZeroCode;
  const float z1 = kZP ? (float)((sl.z1[0] >> sl.zsh[0]) & 0xFu) : (float)kSymmetricZeroCode;
  float tmp[2][NT][4];  // chain 0 starts from the correction, chain 1 from zero
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const float2 ca = crow[j][0][u], cb = crow[j][1][u];
    tmp[0][j][0] = fmaf(z0, ca.y, ca.x);
    tmp[0][j][1] = fmaf(z0, cb.y, cb.x);
    tmp[0][j][2] = fmaf(z1, ca.y, ca.x);
    tmp[0][j][3] = fmaf(z1, cb.y, cb.x);
#pragma unroll
    for (int e = 0; e < 4; ++e) tmp[1][j][e] = 0.f;
  }
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    uint32_t x0 = word_of(sl.w0, w), x1 = word_of(sl.w1, w);
#pragma unroll
    for (int e = 0; e < 2; ++e) {  // e = 0: codes 0/4 and 1/5 of the word; e = 1: 2/6 and 3/7
      const uint32_t r0 = lop3_and_or(x0, 0x000F000Fu, 0x64006400u), r2 = lop3_and_or(x0, 0x00F000F0u, 0x64006400u);
      const uint32_t r1 = lop3_and_or(x1, 0x000F000Fu, 0x64006400u), r3 = lop3_and_or(x1, 0x00F000F0u, 0x64006400u);
#pragma unroll
      for (int j = 0; j < NT; ++j) mma16816(tmp[e][j], r0, r1, r2, r3, af[j][4 * w + 2 * e], af[j][4 * w + 2 * e + 1]);
      x0 >>= 8;
      x1 >>= 8;
    }
  }
  add_scaled_chains<NT>(tmp, sl, acc);
}

// WARPS = 16 (cfg bit 8): twice the warps per CTA, each with half the K slice, so that a warp's
// math waits on fewer loads (units per batch: 2).
template <int NT, bool kScaleAfter, bool kZP, bool kFast, bool kSmemAct, int WARPS>
__global__ void __launch_bounds__(WARPS * 32, WARPS == 16 ? 2 : ((kSmemAct && kScaleAfter && !kZP) ? 3 : 2))
    skinny_burst_kernel(const KernelParams p) {
  extern __shared__ __align__(16) uint8_t bsm[];  // activation stage (kSmemAct)
  __shared__ float red[WARPS][NT * 4 * 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int upw = p.units_per_warp;
  const int u0 = warp * upw;
  const int k = (int)p.k;
  const int64_t group = blockIdx.x;
  const SkinnyCols c = skinny_cols(p, group, g, t, u0);
  constexpr bool kPerm = kSmemAct && kScaleAfter;  // lean dequant (skinny_compute_perm)
  const int arows = act_stage_rows(p.m, NT);
  float2* corr = reinterpret_cast<float2*>(bsm + arows * act_stage_stride(p.units) * 2);  // [units][arows]
  const uint16_t* arow[NT];
  const float2* crow[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int64_t row = (j * 8 + g) < p.m ? (j * 8 + g) : p.m - 1;
    arow[j] = kSmemAct ? reinterpret_cast<const uint16_t*>(bsm) + row * act_stage_stride(p.units)
                       : static_cast<const uint16_t*>(p.a) + row * p.k;
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // tokens of the accumulator columns: j * 8 + 2t + h
      const int tok = j * 8 + 2 * t + h;
      crow[j][h] = corr + (tok < p.m ? tok : (int)p.m - 1);
    }
  }
  if (p.pdl) griddep_launch_dependents();
  const bool stage = kPerm && !(p.skinny_cfg & 512);  // bit 9: DIAGNOSTIC, no activation staging
  if (stage && !p.pdl)  // A is ready at entry: its copies go out first
    stage_act_issue(p, arows, p.units, act_stage_stride(p.units), reinterpret_cast<uint16_t*>(bsm));

  float acc[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;

  constexpr int UB = (NT == 1 && WARPS == 8) ? kBurstUnits : kBurstUnits / 2;
  for (int ub = 0; ub < upw; ub += UB) {  // warp-uniform
    SkinnySlot sl[UB];
#pragma unroll
    for (int i = 0; i < UB; ++i)
      if (ub + i < upw) skinny_load<kScaleAfter, kZP, kFast>(p, c, u0 + ub + i, ub + i, t, sl[i]);
    if (ub == 0) {                // block-uniform
      if (p.pdl) griddep_wait();  // weights are in flight; A may come from the previous kernel
      if (kPerm) {
        if (stage) {
          if (p.pdl) stage_act_issue(p, arows, p.units, act_stage_stride(p.units), reinterpret_cast<uint16_t*>(bsm));
          stage_act_perm(arows, p.units, act_stage_stride(p.units), reinterpret_cast<uint16_t*>(bsm), corr);
        }
        __syncthreads();
      } else if (kSmemAct) {
        stage_act_smem(p, arows, p.units * 128, act_stage_stride(p.units), reinterpret_cast<uint16_t*>(bsm));
        __syncthreads();
      }
    }
#pragma unroll
    for (int i = 0; i < UB; ++i) {
      const int u = u0 + ub + i;
      if (ub + i < upw && u * 128 < k) {  // warp-uniform
        const int kc = u * 128 + t * 32;
        if (p.skinny_cfg & 8) {  // diagnostic: stream the weights only, no dequant / mma
          acc[0][0] += __uint_as_float((sl[i].w0.x ^ sl[i].w0.y ^ sl[i].w0.z ^ sl[i].w0.w ^ sl[i].w1.x ^ sl[i].w1.y ^
                                        sl[i].w1.z ^ sl[i].w1.w ^ sl[i].s0[0]) &
                                       0x3FFFFFu);
        } else {
          if constexpr (kPerm) {
            const float2* cr[NT][2];
#pragma unroll
            for (int j = 0; j < NT; ++j) cr[j][0] = crow[j][0] + u * arows, cr[j][1] = crow[j][1] + u * arows;
            skinny_compute_perm<NT, kZP>(sl[i], arow, cr, 0, kc, acc);
          } else {
            skinny_compute<NT, kScaleAfter, kFast, kSmemAct>(sl[i], arow, kc, k, acc);
          }
        }
      }
    }
  }

#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) red[warp][(j * 4 + i) * 32 + lane] = acc[j][i];
  __syncthreads();
  reduce_store_group<NT, WARPS>(red, p, group, WARPS * 32);
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
// Hopper warpgroup-MMA fp16 GEMM (sm_90a, any M)
// ------------------------------------------------------------------------------------
// Y^T = W · A^T on wgmma: the dequantized weights are the register operand (each of the two
// warpgroups owns WGM x 64 rows of N; one m64nBTk16 per 16 k), the activations the
// shared-memory operand (BT tokens x 64 k per stage, K-major, 128-byte swizzle, written by
// cp.async). Packed weights (32 bytes per row per 64-k tile) and per-16-k scales / zero
// points go through the same STAGES-deep ring; each thread dequantizes its fragment straight
// from the packed bytes in shared memory (prmt/lop3/hfma2, exact (c - z), one fp16 multiply
// by the scale), so fp16 weights are never stored. The dequant of step s+1 runs while the
// wgmma of step s is in flight. SPLIT > 1 splits K over a thread-block cluster, reduced
// through distributed shared memory (as gemm_f16_kernel).

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ONNXQ_WGMMA_DEVICE 1
#endif

__device__ __forceinline__ void wgmma_m64n32(float (&d)[16], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t desc, int scale_d) {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "{%16,%17,%18,%19}, %20, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_m64n64(float (&d)[32], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t desc, int scale_d) {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_m64n128(float (&d)[64], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t desc, int scale_d) {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(scale_d));
#endif
}

__device__ __forceinline__ void wgmma_m64n256(float (&d)[128], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                              uint64_t desc, int scale_d) {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %133, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
      "{%128,%129,%130,%131}, %132, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(scale_d));
#endif
}

template <int BT>
__device__ __forceinline__ void wgmma_bt(float (&d)[BT / 2], const uint32_t (&a)[4], uint64_t desc, int scale_d) {
  if constexpr (BT == 32) wgmma_m64n32(d, a[0], a[1], a[2], a[3], desc, scale_d);
  else if constexpr (BT == 64) wgmma_m64n64(d, a[0], a[1], a[2], a[3], desc, scale_d);
  else if constexpr (BT == 128) wgmma_m64n128(d, a[0], a[1], a[2], a[3], desc, scale_d);
  else wgmma_m64n256(d, a[0], a[1], a[2], a[3], desc, scale_d);
}

__device__ __forceinline__ void wg_fence() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_fence_acc(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#if defined(ONNXQ_WGMMA_DEVICE)
// Split-K over a cluster (both wgmma kernels): every rank's accumulators are added into rank 0's
// through distributed shared memory. ``red``: this CTA's buffer, ``stride`` floats apart per
// accumulator, this thread's at ``idx``. True on rank 0, the only rank with an epilogue left.
template <class C>
__device__ __forceinline__ bool cluster_reduce_acc(float (&acc)[C::WGM][C::NACC], float* red, int rank, int stride,
                                                   int idx) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
  if (rank != 0) {
#pragma unroll
    for (int a = 0; a < C::WGM; ++a)
#pragma unroll
      for (int e = 0; e < C::NACC; ++e) red[(a * C::NACC + e) * stride + idx] = acc[a][e];
  }
  cluster.sync();
  if (rank == 0) {
#pragma unroll 1
    for (int r = 1; r < C::SPLIT; ++r) {
      const float* peer = cluster.map_shared_rank(red, r);
#pragma unroll
      for (int a = 0; a < C::WGM; ++a)
#pragma unroll
        for (int e = 0; e < C::NACC; ++e) acc[a][e] += peer[(a * C::NACC + e) * stride + idx];
    }
  }
  cluster.sync();  // peers' shared memory must outlive rank 0's reads
  return rank == 0;
}

// Split-K over a cluster, reduce-scatter form (warp-specialized kernel): every rank publishes its
// accumulators in its own shared memory, then adds the peers' values of the 8-token groups j it
// owns (j % SPLIT == rank), which it stores itself (store_wgmma_tile with jsel = rank). The DSMEM
// reads and the stores are spread over the ranks: rank 0 alone reading every peer took 1.9 us of
// a 3.5 us reduction (H100, BT 64 split 3 and BT 128 split 2; ops/cuda/NOTES.md).
template <class C>
__device__ __forceinline__ void cluster_reduce_scatter_acc(float (&acc)[C::WGM][C::NACC], float* red, int rank,
                                                           int stride, int idx) {
  namespace cg = cooperative_groups;
  cg::cluster_group cluster = cg::this_cluster();
#pragma unroll
  for (int a = 0; a < C::WGM; ++a)
#pragma unroll
    for (int e = 0; e < C::NACC; ++e) red[(a * C::NACC + e) * stride + idx] = acc[a][e];
  cluster.sync();
#pragma unroll 1
  for (int r = 1; r < C::SPLIT; ++r) {
    const int q = rank + r < C::SPLIT ? rank + r : rank + r - C::SPLIT;  // staggered: no peer read by all
    const float* peer = cluster.map_shared_rank(red, q);
#pragma unroll
    for (int a = 0; a < C::WGM; ++a)
#pragma unroll
      for (int j = 0; j < C::BT / 8; ++j)
        if (j % C::SPLIT == rank)
#pragma unroll
          for (int u = 0; u < 4; ++u) acc[a][4 * j + u] += peer[(a * C::NACC + 4 * j + u) * stride + idx];
  }
  cluster.sync();  // peers' shared memory must outlive the reads
}

// Epilogue of both wgmma kernels: this thread's accumulators of its warpgroup's tiles of Y^T
// (warp quarter wq, lane group g, lane t) plus the bias, stored as fp16; rows past M and columns
// past N are skipped.
// jstep > 1: only the 8-token groups j with j % jstep == jsel (a rank's share after a reduce-scatter).
template <class C>
__device__ __forceinline__ void store_wgmma_tile(const KernelParams& p, const float (&acc)[C::WGM][C::NACC],
                                                 int64_t m0, int64_t n0, int wg, int wq, int g, int t,
                                                 int jsel = 0, int jstep = 1) {
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  __half* Y = static_cast<__half*>(p.y);
#pragma unroll
  for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t col = n0 + (wg * C::WGM + mt) * 64 + wq * 16 + g + 8 * h;
      if (col < p.n) {
        const float bv = bias ? half_bits_to_float(ldg_u16(bias + col)) : 0.f;
#pragma unroll
        for (int j = 0; j < C::BT / 8; ++j)
          if (j % jstep == jsel)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t row = m0 + 8 * j + 2 * t + e;
              if (row < p.m) Y[row * p.n + col] = __float2half_rn(acc[mt][4 * j + 2 * h + e] + bv);
            }
      }
    }
}
#endif

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t wg_desc_sw128(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFFu) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

// Pair of codes in byte `sel` (runtime prmt selector, see wgmma kernel) -> exact (c_lo - z, c_hi - z).
__device__ __forceinline__ uint32_t dq_pair_sel(uint32_t x, uint32_t sel, uint32_t sub) {
  const uint32_t y = __byte_perm(x, 0u, sel);
  return hfma2_u32(lop3_and_or(y, 0x00F0000Fu, 0x64006400u), kMulLoHi, sub);
}

template <int BT_, int WGM_, int SPLIT_, int STAGES_, int KT_>
struct WgCfg {
  static constexpr int BT = BT_, WGM = WGM_, SPLIT = SPLIT_, STAGES = STAGES_, KT = KT_, BK = 64 * KT;
  static constexpr int kThreads = 256;  // two warpgroups
  static constexpr int BN = 2 * 64 * WGM;
  static constexpr int NACC = BT / 2;       // fp32 accumulators per thread per 64-row tile
  static constexpr int kA = KT * BT * 128;  // activations: KT atoms of BT rows x 64 halves, 128B-swizzled
  static constexpr int kB = BN * 32 * KT;   // packed weights: BN rows x 32*KT bytes
  static constexpr int kS = BN * 8 * KT;    // fp16 scale of each row for each 16-k step
  static constexpr int kZ = BN * 4 * KT;    // zero-point code of each row for each 16-k step
  static constexpr int kStageBytes = (kA + kB + kS + kZ + 1023) / 1024 * 1024;
  static constexpr int kPipeBytes = STAGES * kStageBytes;
  static constexpr int kRedBytes = SPLIT > 1 ? kThreads * WGM * NACC * 4 : 0;
  static constexpr int kSmemBytes = (kPipeBytes > kRedBytes ? kPipeBytes : kRedBytes) + 1024;  // + alignment
  static constexpr int kSPer = BN * 4 * KT / kThreads;  // scale entries staged per thread per tile
  static constexpr int kMinBlocks = (BT * WGM <= 128 && kSmemBytes <= 113 * 1024) ? 2 : 1;
  static_assert(STAGES >= 5, "scales are stored two or more iterations after their load");
  static_assert(BT % 32 == 0 && BT <= 256 && (BT * 8) % kThreads == 0, "token tile");
  static_assert(kSmemBytes <= 227 * 1024, "shared memory");
};

// Per-thread copy state of the wgmma kernel, computed once per CTA: every 64-k tile then costs
// a few integer adds per copy (the address math otherwise dominates the instruction stream).
// Rows past M / N read row 0 (their outputs are never stored), so only the K tail needs guards:
// tiles wholly inside K and the packed rows take a guard-free path.
__device__ __forceinline__ void cp_async16_s(uint32_t saddr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async16_s_full(uint32_t saddr, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(saddr), "l"(gmem));
}
__device__ __forceinline__ void cp_async16_s_l2_256_full(uint32_t saddr, const void* gmem) {
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16;" ::"r"(saddr), "l"(gmem));
}

template <class C, bool kAVec>
struct WgLoader {
  static constexpr int NA = C::KT * C::BT * 8 / C::kThreads;  // 16-byte activation chunks per thread per tile
  static constexpr int NB = C::KT * C::BN * 2 / C::kThreads;  // 16-byte packed-weight chunks
  const uint16_t* a_src[NA];  // (row, chunk) at k = 0
  uint32_t a_dst[NA];         // byte offset in the stage (128B swizzle)
  int a_k[NA];                // chunk's k offset in the tile
  const uint8_t* b_src[NB];   // (row, 16-byte piece) at k = 0
  uint32_t b_dst[NB];
  int b_k[NB];
  const uint16_t* s_src[C::kSPer];  // scale row
  const uint8_t* z_src[C::kSPer];   // zero-point row (null: symmetric)
  int s_k[C::kSPer];                // 16-k step offset of the entry

  __device__ __forceinline__ WgLoader(const KernelParams& p, int64_t m0, int64_t n0) {
    const uint16_t* A = static_cast<const uint16_t*>(p.a);
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      const int c = threadIdx.x + i * C::kThreads, sub = c / (C::BT * 8), cc = c % (C::BT * 8);
      const int r = cc >> 3, kc = cc & 7;
      const int64_t gm = m0 + r < p.m ? m0 + r : 0;
      a_src[i] = A + gm * p.k + sub * 64 + kc * 8;
      a_dst[i] = sub * C::BT * 128 + r * 128 + ((kc ^ (r & 7)) << 4);
      a_k[i] = sub * 64 + kc * 8;
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      const int c = threadIdx.x + i * C::kThreads, row = c / (2 * C::KT), h = c % (2 * C::KT);
      const int64_t gn = n0 + row < p.n ? n0 + row : 0;
      b_src[i] = p.b + gn * p.row_bytes + h * 16;
      b_dst[i] = C::kA + row * 32 * C::KT + h * 16;
      b_k[i] = 32 * h;
    }
#pragma unroll
    for (int i = 0; i < C::kSPer; ++i) {
      const int e = threadIdx.x + i * C::kThreads;
      const int64_t gn = n0 + e / (4 * C::KT) < p.n ? n0 + e / (4 * C::KT) : 0;
      s_src[i] = static_cast<const uint16_t*>(p.s) + gn * p.nb;
      z_src[i] = p.z ? p.z + gn * p.zcols : nullptr;
      s_k[i] = 16 * (e % (4 * C::KT));
    }
  }

  __device__ __forceinline__ void issue_a(const KernelParams& p, uint8_t* stage, int k0) const {
    const uint32_t st = smem_u32(stage);
    if (kAVec && k0 + C::BK <= (int)p.k) {  // block-uniform: whole tile inside K
#pragma unroll
      for (int i = 0; i < NA; ++i) cp_async16_s_full(st + a_dst[i], a_src[i] + k0);
      return;
    }
#pragma unroll
    for (int i = 0; i < NA; ++i) {
      const int gk = k0 + a_k[i];
      if (kAVec) {
        const bool ok = gk < (int)p.k;
        cp_async16_s(st + a_dst[i], ok ? (const void*)(a_src[i] + k0) : p.a, ok ? 16 : 0);
      } else {  // K % 8 != 0: synchronous guarded loads
        uint32_t v[4];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint32_t lo = (gk + 2 * q < p.k) ? ldg_u16(a_src[i] + k0 + 2 * q) : 0u;
          const uint32_t hi = (gk + 2 * q + 1 < p.k) ? ldg_u16(a_src[i] + k0 + 2 * q + 1) : 0u;
          v[q] = lo | (hi << 16);
        }
        *reinterpret_cast<uint4*>(stage + a_dst[i]) = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
  }

  __device__ __forceinline__ void issue_b(const KernelParams& p, uint8_t* stage, int k0) const {
    const uint32_t st = smem_u32(stage);
    if (p.b_vec16 && k0 + C::BK <= (int)p.kp) {  // block-uniform: whole tile inside the packed rows
#pragma unroll
      for (int i = 0; i < NB; ++i) cp_async16_s_l2_256_full(st + b_dst[i], b_src[i] + (k0 >> 1));
      return;
    }
#pragma unroll
    for (int i = 0; i < NB; ++i) {
      const int kc = k0 + b_k[i];
      const int nbytes = kc + 32 <= (int)p.kp ? 16 : (kc + 16 <= (int)p.kp ? 8 : 0);
      const uint8_t* src = nbytes ? b_src[i] + (k0 >> 1) : p.b;
      uint8_t* dst = stage + b_dst[i];
      if (p.b_vec16) {
        cp_async16_l2_256(dst, src, nbytes);
      } else {
        cp_async8(dst, src, nbytes >= 8 ? 8 : 0);
        cp_async8(dst + 8, nbytes == 16 ? src + 8 : p.b, nbytes == 16 ? 8 : 0);
      }
    }
  }

  // Scales / zero-point bytes of one tile, as loaded (entry e = row * 4 * KT + 16-k step).
  __device__ __forceinline__ void load_scales(const KernelParams& p, uint32_t (&sc)[C::kSPer],
                                              uint32_t (&zb)[C::kSPer], int k0) const {
#pragma unroll
    for (int i = 0; i < C::kSPer; ++i) {
      const int kk = k0 + s_k[i];
      const bool in = kk < (int)p.kp;
      const int kb = kk >> p.bs_shift;
      sc[i] = in ? ldg_u16(s_src[i] + kb) : 0u;
      zb[i] = (in && z_src[i]) ? (uint32_t)__ldg(z_src[i] + (kb >> 1)) : 0x88u;
    }
  }

  __device__ __forceinline__ void store_scales(const KernelParams& p, const uint32_t (&sc)[C::kSPer],
                                               const uint32_t (&zb)[C::kSPer], uint8_t* stage, int k0) const {
    uint16_t* ss = reinterpret_cast<uint16_t*>(stage + C::kA + C::kB);
    uint8_t* sz = stage + C::kA + C::kB + C::kS;
#pragma unroll
    for (int i = 0; i < C::kSPer; ++i) {
      const int e = threadIdx.x + i * C::kThreads;
      const int kb = (k0 + s_k[i]) >> p.bs_shift;
      ss[e] = (uint16_t)sc[i];
      sz[e] = (uint8_t)((zb[i] >> ((kb & 1) * 4)) & 0xFu);
    }
  }
};

template <class C, bool kAVec>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) wgmma_f16_kernel(const KernelParams p) {
#if defined(ONNXQ_WGMMA_DEVICE)
  extern __shared__ uint8_t wg_smem_raw[];
  const uint32_t raw_u32 = smem_u32(wg_smem_raw);
  const uint32_t base_u32 = (raw_u32 + 1023u) & ~1023u;  // 128B swizzle: 1024-byte aligned stages
  uint8_t* base = wg_smem_raw + (base_u32 - raw_u32);
  constexpr int S = C::STAGES;

  const int64_t tiles_m = (p.m + C::BT - 1) / C::BT;
  const int64_t tile = (int64_t)blockIdx.x / C::SPLIT;
  const int rank = (int)(blockIdx.x % C::SPLIT);  // == cluster rank (cluster dims (SPLIT,1,1))
  const int64_t tn = tile / tiles_m, tm = tile % tiles_m;  // n-tile major: m-tiles of one weight tile adjacent
  const int64_t m0 = tm * C::BT, n0 = tn * C::BN;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wq = warp & 3, g = lane >> 2, t = lane & 3;
  const int ktiles = (int)((p.k + C::BK - 1) / C::BK);
  const int per = (ktiles + C::SPLIT - 1) / C::SPLIT;
  const int kt0 = min(ktiles, rank * per), nt = min(ktiles, kt0 + per) - kt0;
  const uint32_t sel = (uint32_t)t | 0x4040u | ((uint32_t)t << 8);  // bytes (t, 0, t, 0)

  if (p.pdl) griddep_launch_dependents();

  float acc[C::WGM][C::NACC];  // the first wgmma overwrites (scale-d 0): no other writer in the main loop

  // Scales / zero points of tile j are loaded (into registers) with its weights at iteration
  // j - (S-2) and stored into its stage at iteration j - 1, kLag iterations later: storing a
  // just-loaded register would stall the whole CTA for a memory latency every tile.
  constexpr int kLag = S - 3;
  uint32_t psc[kLag][C::kSPer], pzb[kLag][C::kSPer];
  const WgLoader<C, kAVec> ld(p, m0, n0);
  const int kbase = kt0 * C::BK;
  // prologue: weights and scales first (independent of earlier kernels), A after the PDL wait;
  // all scale loads in flight together, then stored (one memory latency, not S-2)
  {
    uint32_t qsc[S - 2][C::kSPer], qzb[S - 2][C::kSPer];
#pragma unroll
    for (int s = 0; s < S - 2; ++s)
      if (s < nt) {
        const int k0 = kbase + s * C::BK;
        ld.issue_b(p, base + s * C::kStageBytes, k0);
        ld.load_scales(p, qsc[s], qzb[s], k0);
      }
#pragma unroll
    for (int s = 0; s < S - 2; ++s)
      if (s < nt) ld.store_scales(p, qsc[s], qzb[s], base + s * C::kStageBytes, kbase + s * C::BK);
  }
  if (p.pdl) griddep_wait();
#pragma unroll
  for (int s = 0; s < S - 2; ++s) {
    if (s < nt) ld.issue_a(p, base + s * C::kStageBytes, kbase + s * C::BK);
    cp_async_commit();
  }

  for (int i0 = 0; i0 < nt; i0 += kLag) {
#pragma unroll
  for (int r = 0; r < kLag; ++r) {  // i % kLag == r: static register slots
    const int i = i0 + r;
    if (i >= nt) break;  // block-uniform
    cp_async_wait<S - 3>();
    __syncthreads();  // tile i landed for all; every warpgroup's wgmmas of tile i-2 are complete
    {
      const int jn = i + 1;  // its scales were loaded at iteration i - kLag, slot r
      if (jn >= S - 2 && jn < nt)
        ld.store_scales(p, psc[r], pzb[r], base + (jn % S) * C::kStageBytes, kbase + jn * C::BK);
      const int j = i + S - 2;
      if (j < nt) {
        uint8_t* st = base + (j % S) * C::kStageBytes;
        const int k0 = kbase + j * C::BK;
        ld.issue_b(p, st, k0);
        ld.issue_a(p, st, k0);
        ld.load_scales(p, psc[r], pzb[r], k0);
      }
      cp_async_commit();
    }

    const int st = i % S;
    const uint8_t* sb = base + st * C::kStageBytes + C::kA;
    const uint16_t* ss = reinterpret_cast<const uint16_t*>(sb + C::kB);
    const uint8_t* sz = sb + C::kB + C::kS;
    const uint32_t a_addr = base_u32 + st * C::kStageBytes;
    uint4 w[C::WGM][2][2 * C::KT];  // [m64 tile][row g / g+8][16 bytes]
    uint2 sv[C::WGM][2][C::KT];
    uint32_t zv[C::WGM][2][C::KT];
#pragma unroll
    for (int mt = 0; mt < C::WGM; ++mt) {
      const int r0 = (wg * C::WGM + mt) * 64 + wq * 16 + g;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = r0 + 8 * h;
#pragma unroll
        for (int q = 0; q < 2 * C::KT; ++q) w[mt][h][q] = *reinterpret_cast<const uint4*>(sb + r * 32 * C::KT + 16 * q);
#pragma unroll
        for (int q = 0; q < C::KT; ++q) {
          sv[mt][h][q] = *reinterpret_cast<const uint2*>(ss + r * 4 * C::KT + 4 * q);
          zv[mt][h][q] = *reinterpret_cast<const uint32_t*>(sz + r * 4 * C::KT + 4 * q);
        }
      }
    }
#pragma unroll
    for (int s = 0; s < 4 * C::KT; ++s) {
      const int sub = s >> 2, s4 = s & 3;  // 64-k atom, 16-k step inside it
      uint32_t fr[C::WGM][4];
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // h: row g / g + 8
          const uint32_t hv = (s4 < 2) ? sv[mt][h][sub].x : sv[mt][h][sub].y;
          const uint32_t sc = __byte_perm(hv, 0u, (s4 & 1) ? 0x3232u : 0x1010u);
          const uint32_t sub_bits = zp_sub_bits((zv[mt][h][sub] >> (8 * s4)) & 0xFu);
          const uint4& wv = w[mt][h][s >> 1];
          const uint32_t xlo = word_of(wv, 2 * (s & 1)), xhi = word_of(wv, 2 * (s & 1) + 1);
          fr[mt][h] = hmul2_u32(dq_pair_sel(xlo, sel, sub_bits), sc);      // k 2t, 2t+1
          fr[mt][2 + h] = hmul2_u32(dq_pair_sel(xhi, sel, sub_bits), sc);  // k 2t+8, 2t+9
        }
      }
      wg_fence();
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt) {
        wg_fence_acc(acc[mt]);
        wgmma_bt<C::BT>(acc[mt], fr[mt], wg_desc_sw128(a_addr + sub * C::BT * 128 + 32 * s4), (i | s) != 0);
        wg_fence_acc(acc[mt]);
      }
      wg_commit();
      wg_wait<1>();
    }
  }
  }
  wg_wait<0>();
#pragma unroll
  for (int mt = 0; mt < C::WGM; ++mt) wg_fence_acc(acc[mt]);
  if (nt == 0) {  // empty K slice (split-K remainder): no wgmma wrote acc
#pragma unroll
    for (int a = 0; a < C::WGM; ++a)
#pragma unroll
      for (int e = 0; e < C::NACC; ++e) acc[a][e] = 0.f;
  }
  cp_async_wait<0>();

  if constexpr (C::SPLIT > 1) {
    __syncthreads();  // pipeline buffers are free
    if (!cluster_reduce_acc<C>(acc, reinterpret_cast<float*>(base), rank, C::kThreads, tid)) return;
  }

  store_wgmma_tile<C>(p, acc, m0, n0, wg, wq, g, t);
#else
  __trap();  // launched only on sm_90 from an sm_90a build (see WgmmaAvailable)
#endif
}

// wgmma configurations (index = MatMulArgs::config for Path::kWgmma).
// CTA tile: BN = 128 * WGM rows of N x BT tokens x 64*KT k per pipeline stage.
//                BT WGM SPLIT STAGES KT
using Wg0 = WgCfg<32, 1, 1, 8, 1>;
using Wg1 = WgCfg<64, 1, 2, 5, 2>;
using Wg2 = WgCfg<256, 1, 4, 5, 1>;
using Wg3 = WgCfg<64, 1, 4, 7, 1>;
using Wg4 = WgCfg<128, 1, 2, 5, 2>;
using Wg5 = WgCfg<128, 1, 2, 6, 1>;
using Wg6 = WgCfg<256, 1, 1, 5, 1>;
using Wg7 = WgCfg<256, 1, 2, 5, 1>;
using Wg8 = WgCfg<128, 1, 2, 5, 1>;
using Wg9 = WgCfg<64, 1, 8, 7, 1>;
constexpr int kNumWgConfigs = 10;

// ------------------------------------------------------------------------------------
// Hopper wgmma kernel, warp-specialized (sm_90a, any M)
// ------------------------------------------------------------------------------------
// Same math and shared-memory formats as wgmma_f16_kernel, but the copies leave the
// consumers' instruction stream: warpgroup 0 (the producer, few registers after setmaxnreg)
// issues every cp.async of a stage (activations 128B-swizzled, packed weights) and stages the
// per-16-k scales / zero-point codes; completion is signalled on a per-stage "full" mbarrier
// (cp.async.mbarrier.arrive.noinc from each producer thread, plus one ordinary arrive per
// producer thread once the scales of that stage are stored, C::kLag stages after their loads,
// so no thread waits on a just-loaded register). Warpgroups 1 and 2 (the consumers, more
// registers) wait on "full", LDS their weight / scale fragments, dequantize and issue wgmma,
// and release the stage on its "empty" mbarrier (one arrive per consumer warp) as soon as
// the stage's wgmmas have completed. No __syncthreads in the main loop.

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred p;\nWS_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@!p bra WS_WAIT;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
__device__ __forceinline__ void cp_async_mbar_arrive_noinc(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_smem() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
template <int R>
__device__ __forceinline__ void setmaxnreg_inc() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R));
#endif
}
template <int R>
__device__ __forceinline__ void setmaxnreg_dec() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R));
#endif
}
__device__ __forceinline__ void cp_async16_zfill(uint32_t saddr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(saddr), "l"(gmem), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async8_zfill(uint32_t saddr, const void* gmem, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(saddr), "l"(gmem), "r"(src_bytes));
}


__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
// 2-D TMA tile load into this CTA's shared memory, completing on `bar` (transaction bytes).
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}

// Push-form split-K exchange (RS configs): 16-byte remote store into a cluster peer's shared memory,
// completing transaction bytes on the peer's mbarrier (both addresses already mapped with mapa).
__device__ __forceinline__ void st_async_v4(uint32_t raddr, float a, float b, float c, float d, uint32_t rbar) {
  asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.f32 [%0], {%1, %2, %3, %4}, [%5];" ::"r"(raddr),
               "f"(a), "f"(b), "f"(c), "f"(d), "r"(rbar)
               : "memory");
}
__device__ __forceinline__ uint32_t mapa_rank(uint32_t addr, int rank) {
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}

// Stream-K partial-tile exchange (SK configs): 1-D bulk copy global -> this CTA's shared memory,
// and the per-CTA ready flags (written with release, read with acquire, reset by the one reader).
__device__ __forceinline__ void bulk_load_1d(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ int ld_acquire_gpu(const int* p) {
  int v;
  asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_gpu(int* p, int v) {
  asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_relaxed_gpu(int* p, int v) {
  asm volatile("st.relaxed.gpu.global.b32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void fence_proxy_async_global() {
#if defined(ONNXQ_WGMMA_DEVICE)
  asm volatile("fence.proxy.async.global;" ::: "memory");
#endif
}
// First (tile, k-tile) unit of stream-K CTA c: CTAs take equal runs of `units`.
__device__ __forceinline__ int sk_start(int c, int64_t units, int ctas) { return (int)((int64_t)c * units / ctas); }

template <int BT_, int WGM_, int SPLIT_, int STAGES_, int KT_, int MINB_, int KIN_ = 1, int ILV_ = 0, int SK_ = 0,
          int RS_ = 0>
struct WsCfg {
  static constexpr int BT = BT_, WGM = WGM_, SPLIT = SPLIT_, STAGES = STAGES_, KT = KT_, BK = 64 * KT;
  // SK = 1: stream-K schedule (SkCtas: the most CTAs <= #SMs that leave every tile at most two
  // contributors). sk_ctas CTAs take equal runs of the (tile, k-tile) units; a CTA whose run starts
  // inside a tile writes that partial tile to its workspace slot, the CTA holding the tile's first
  // k-tile adds the later partials (fixed order: deterministic) and stores. Needs TMA, block size
  // >= BK and a workspace; otherwise the launcher runs Base (the same config without SK).
  static constexpr int SK = SK_;
  using Base = WsCfg<BT_, WGM_, SPLIT_, STAGES_, KT_, MINB_, KIN_, ILV_, 0>;
  // ILV: consumer loop variant (0: dequantize the whole tile, then its wgmmas; 1: same with the
  // per-tile scale / zero-point operands hoisted for block size >= BK; 2: 1 + each 16-k step's
  // fragment dequantized right before its wgmma).
  static constexpr int ILV = ILV_;
  // KIN consumer groups of two warpgroups each take every KIN-th k-tile of the CTA's K slice
  // (intra-CTA split-K, reduced through shared memory at the end): more independent
  // dequant -> wgmma chains per SM without split-K clusters.
  static constexpr int KIN = KIN_;
  static constexpr int kGroupThreads = 256;  // two consumer warpgroups: the CTA's BN rows
  static constexpr int kProducers = 128, kConsumers = kGroupThreads * KIN, kThreads = kProducers + kConsumers;
  static constexpr int BN = 2 * 64 * WGM;
  static constexpr int NACC = BT / 2;
  static constexpr int kA = KT * BT * 128;
  static constexpr int kB = BN * 32 * KT;
  static constexpr int kS = BN * 8 * KT;
  static constexpr int kZ = BN * 4 * KT;
  static constexpr int kStageBytes = (kA + kB + kS + kZ + 1023) / 1024 * 1024;
  static constexpr int kPipeBytes = STAGES * kStageBytes;
  static constexpr int kAccBytes = kGroupThreads * WGM * NACC * 4;  // one group's accumulators
  static constexpr int kRedBytes = (SPLIT > 1 || KIN > 1) ? (KIN > 1 ? KIN - 1 : 1) * kAccBytes : 0;
  // RS = 1 (SPLIT > 1, KIN 1): push-form split-K exchange. After its loop every rank sends each peer
  // the 8-token groups that peer owns (j % SPLIT) with st.async into a dedicated receive buffer after
  // the stages (completion on the peer's mbarrier), then waits for its own groups and adds them from
  // local shared memory: no cluster.sync after the loop (the old form: publish, cluster.sync, DSMEM
  // loads, cluster.sync). The buffer costs stages.
  static constexpr int RS = RS_;
  static constexpr int kOwnGroups = (BT / 8 + SPLIT - 1) / SPLIT;  // 8-token groups a rank owns (at most)
  static constexpr int kRecvBytes = RS_ ? (SPLIT - 1) * WGM * kOwnGroups * kGroupThreads * 16 : 0;
  static_assert(RS_ == 0 || (SPLIT_ > 1 && KIN_ == 1 && SK_ == 0), "push exchange: cluster split-K, one group");
  static constexpr int kBarOff0 = kPipeBytes + kRecvBytes;
  static constexpr int kBarOff = kBarOff0 > kRedBytes ? kBarOff0 : kRedBytes;
  static constexpr int kSmemBytes = kBarOff + 2 * STAGES * 8 + (SK_ || RS_ ? 16 : 0) + 1024;  // + mbarriers + alignment
  static constexpr int kSlotBytes = BT * BN * 4;  // SK: one partial tile (fp32)
  static_assert(SK_ == 0 || (SPLIT_ == 1 && KIN_ == 1 && ILV_ > 0 && WGM_ == 1 && kPipeBytes >= kSlotBytes),
                "stream-K: unsplit, one consumer group, ILV loop, the stages hold a partial tile");
  static constexpr int kSPer = BN * 4 * KT / kProducers;  // scale entries per producer thread per stage
  static constexpr int NA = KT * BT * 8 / kProducers;     // 16-byte activation chunks per producer thread
  static constexpr int NB = KT * BN * 2 / kProducers;     // 16-byte weight chunks per producer thread
  static constexpr int kMinBlocks = MINB_;
  // setmaxnreg moves registers between the warpgroups of one CTA: the CTA keeps the allocation it
  // was launched with (kThreads x the launch-bound register count), so 128 P + the consumers must fit
  // in it (asking for more blocks setmaxnreg.inc forever once the SM is full). LaunchWs checks numRegs.
  static constexpr int kRegCap = (65536 / (kThreads * MINB_)) & ~7;  // 168, 80 or (KIN 2) 96
  static constexpr int kRegP = KIN > 1 ? 40 : (MINB_ == 1 ? 88 : 48);
  static constexpr int kRegC = KIN > 1 ? 104 : (MINB_ == 1 ? 208 : 96);
  static_assert(kProducers * kRegP + kConsumers * kRegC <= kThreads * kRegCap, "register split");
  // Stages between a scale load and its store (producer register ring). The store of tile j-kLag
  // precedes the empty-wait of tile j, so kLag <= STAGES - 1 cannot deadlock; a tile is complete
  // only kLag producer iterations after its copies were issued.
  static constexpr int kLagRegs = (MINB_ == 1 && KIN == 1 ? 16 : 8) / kSPer;  // ring slots that fit the producer
  static constexpr int kLag = STAGES - 1 < kLagRegs ? STAGES - 1 : kLagRegs;
  static_assert(kLag >= 1 && kLag <= STAGES - 1, "pipeline depth");
  static_assert(KIN >= 1 && KIN <= STAGES, "a group's next tile releases its previous stage");
  static_assert(BT % 16 == 0 && BT <= 256 && (BT * 8) % kProducers == 0, "token tile");
  static_assert((BN * 4 * KT) % kProducers == 0 && (KT * BN * 2) % kProducers == 0, "copy split");
  static_assert(kSmemBytes * MINB_ <= 227 * 1024, "shared memory");
};

// Packed-weight tile of the warp-specialized kernel: BN rows of 32*KT bytes, the 16-byte pieces of
// each row XOR-swizzled like TMA's CU_TENSOR_MAP_SWIZZLE_64B (KT 2: piece ^= (row >> 1) & 3) or _32B
// (KT 1: piece ^= (row >> 2) & 1), so the consumers' LDS.128 of 8 rows (one per lane quad) hit 8
// distinct 4-bank groups (unswizzled rows 64 bytes apart: 4-way bank conflict).
template <int KT>
__device__ __forceinline__ int ws_b_swz(int row) {
  static_assert(KT == 1 || KT == 2, "weight swizzle: 32- or 64-byte rows");
  return KT == 2 ? (row >> 1) & 3 : (row >> 2) & 1;
}

// Producer copy state: thread pt of 128 copies activation rows pt/8 + 16 i (chunk pt%8, the same
// swizzled column for every i), weight rows pt/(2KT) + i*64/KT (16-byte piece pt%(2KT)) and the
// scales of rows pt/(4KT) + i*32/KT (16-k step pt%(4KT)). Rows past M / N: zero-filled copies
// (activations, weights) or row 0 (scales): their outputs are never stored.
template <class C, bool kAVec>
struct WsProducer {
  const uint16_t* a0;  // A row (m0 + pt/8)
  const uint8_t* b0;   // B row (n0 + pt/(2KT))
  const uint16_t* s0;  // scale row (n0 + pt/(4KT))
  const uint8_t* z0;   // zero-point row or null
  int a_rows_ok;       // activation rows of this thread inside M (count of i % (BT/16))
  int b_rows_ok;       // weight rows inside N (count of i)
  int s_rows_ok;       // scale rows inside N
  uint32_t a_dst, b_dst;
  int a_kc, b_h, s_step;

  __device__ __forceinline__ WsProducer(const KernelParams& p, int pt, int64_t m0, int64_t n0) {
    const int ar = pt >> 3;
    a_kc = pt & 7;
    a0 = static_cast<const uint16_t*>(p.a) + (m0 + ar < p.m ? (m0 + ar) * p.k : 0);  // + gk per copy
    const int64_t arem = p.m - m0 - ar;  // rows ar + 16 i < M  <=>  i < ceil(arem / 16)
    a_rows_ok = arem <= 0 ? 0 : (int)((arem + 15) / 16 < C::BT / 16 ? (arem + 15) / 16 : C::BT / 16);
    a_dst = ar * 128 + ((a_kc ^ (ar & 7)) << 4);
    const int br = pt / (2 * C::KT);
    b_h = pt % (2 * C::KT);
    b0 = p.b + (n0 + br < p.n ? (n0 + br) * p.row_bytes : 0);  // + kc / 2 per copy
    constexpr int kBStep = 64 / C::KT;
    const int64_t brem = p.n - n0 - br;
    b_rows_ok = brem <= 0 ? 0 : (int)((brem + kBStep - 1) / kBStep < C::NB ? (brem + kBStep - 1) / kBStep : C::NB);
    // (rows br + i * kBStep share br's swizzle: kBStep is a multiple of 8)
    b_dst = C::kA + br * 32 * C::KT + ((b_h ^ ((p.wg_diag & 2) ? 0 : ws_b_swz<C::KT>(br))) << 4);
    const int sr = pt / (4 * C::KT);
    s_step = pt % (4 * C::KT);
    s0 = static_cast<const uint16_t*>(p.s) + (n0 + sr < p.n ? (n0 + sr) * p.nb : 0);
    z0 = p.z ? p.z + (n0 + sr < p.n ? (n0 + sr) * p.zcols : 0) : nullptr;
    constexpr int kSStep = 32 / C::KT;
    const int64_t srem = p.n - n0 - sr;
    s_rows_ok = srem <= 0 ? 0 : (int)((srem + kSStep - 1) / kSStep < C::kSPer ? (srem + kSStep - 1) / kSStep : C::kSPer);
  }

  __device__ __forceinline__ void issue_a(const KernelParams& p, uint32_t st, int k0) const {
    constexpr int RA = C::BT / 16;  // rows per thread per 64-k atom
#pragma unroll
    for (int i = 0; i < C::NA; ++i) {
      const int sub = i / RA, ri = i % RA;
      const int gk = k0 + sub * 64 + a_kc * 8;
      const uint32_t dst = st + a_dst + sub * C::BT * 128 + ri * 16 * 128;
      const uint16_t* src = a0 + (int64_t)ri * 16 * p.k + gk;
      if (kAVec) {
        const bool ok = ri < a_rows_ok && gk < (int)p.k;
        cp_async16_zfill(dst, ok ? (const void*)src : p.a, ok ? 16 : 0);
      } else {  // K % 8 != 0 or A unaligned: synchronous guarded loads (stored before the stage's arrive)
        uint32_t v[4];
        const bool rok = ri < a_rows_ok;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const uint32_t lo = (rok && gk + 2 * q < p.k) ? ldg_u16(src + 2 * q) : 0u;
          const uint32_t hi = (rok && gk + 2 * q + 1 < p.k) ? ldg_u16(src + 2 * q + 1) : 0u;
          v[q] = lo | (hi << 16);
        }
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(dst), "r"(v[0]), "r"(v[1]), "r"(v[2]),
                     "r"(v[3])
                     : "memory");
      }
    }
  }

  __device__ __forceinline__ void issue_b(const KernelParams& p, uint32_t st, int k0) const {
    constexpr int kBStep = 64 / C::KT;
    const int kc = k0 + 32 * b_h;  // first code of this thread's 16-byte piece
    const int nbytes = kc + 32 <= (int)p.kp ? 16 : (kc + 16 <= (int)p.kp ? 8 : 0);
#pragma unroll
    for (int i = 0; i < C::NB; ++i) {
      const uint32_t dst = st + b_dst + i * kBStep * 32 * C::KT;
      const int nb = i < b_rows_ok ? nbytes : 0;
      const uint8_t* src = nb ? b0 + (int64_t)i * kBStep * p.row_bytes + (kc >> 1) : p.b;
      if (p.b_vec16) {
        cp_async16_zfill(dst, src, nb);
      } else {
        cp_async8_zfill(dst, src, nb >= 8 ? 8 : 0);
        cp_async8_zfill(dst + 8, nb == 16 ? src + 8 : p.b, nb == 16 ? 8 : 0);
      }
    }
  }

  __device__ __forceinline__ void load_scales(const KernelParams& p, uint32_t (&sc)[C::kSPer],
                                              uint32_t (&zb)[C::kSPer], int k0) const {
    constexpr int kSStep = 32 / C::KT;
    if (p.wg_diag & 1) {
#pragma unroll
      for (int i = 0; i < C::kSPer; ++i) {
        sc[i] = 0x3C00u;
        zb[i] = 0x88u;
      }
      return;
    }
    const int kk = k0 + 16 * s_step;
    const bool in = kk < (int)p.kp;
    const int kb = kk >> p.bs_shift;
#pragma unroll
    for (int i = 0; i < C::kSPer; ++i) {
      const int64_t off = i < s_rows_ok ? (int64_t)i * kSStep : 0;
      sc[i] = in ? ldg_u16(s0 + off * p.nb + kb) : 0u;
      zb[i] = (in && z0) ? (uint32_t)__ldg(z0 + off * p.zcols + (kb >> 1)) : 0x88u;
    }
  }

  __device__ __forceinline__ void store_scales(const KernelParams& p, const uint32_t (&sc)[C::kSPer],
                                               const uint32_t (&zb)[C::kSPer], uint8_t* stage, int pt,
                                               int k0) const {
    uint16_t* ss = reinterpret_cast<uint16_t*>(stage + C::kA + C::kB);
    uint8_t* sz = stage + C::kA + C::kB + C::kS;
    const int sh = (((k0 + 16 * s_step) >> p.bs_shift) & 1) * 4;
#pragma unroll
    for (int i = 0; i < C::kSPer; ++i) {
      ss[pt + i * C::kProducers] = (uint16_t)sc[i];
      sz[pt + i * C::kProducers] = (uint8_t)((zb[i] >> sh) & 0xFu);
    }
  }
};

// kTma: activations and packed weights arrive by TMA (one thread issues two 2-D tile copies per
// stage; needs 16-byte aligned A rows and B rows); otherwise by per-thread cp.async.
template <class C, bool kAVec, bool kTma>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks)
    wgmma_ws_kernel(const KernelParams p, const __grid_constant__ CUtensorMap tm_a,
                    const __grid_constant__ CUtensorMap tm_b) {
#if defined(ONNXQ_WGMMA_DEVICE)
  extern __shared__ uint8_t wg_smem_raw[];
  const uint32_t raw_u32 = smem_u32(wg_smem_raw);
  const uint32_t base_u32 = (raw_u32 + 1023u) & ~1023u;  // 128B swizzle: 1024-byte aligned stages
  uint8_t* base = wg_smem_raw + (base_u32 - raw_u32);
  constexpr int S = C::STAGES;
  const uint32_t full_bar = base_u32 + C::kBarOff, empty_bar = full_bar + 8 * S;

  const int64_t tiles_m = (p.m + C::BT - 1) / C::BT;
  const int64_t tile = (int64_t)blockIdx.x / C::SPLIT;
  const int rank = (int)(blockIdx.x % C::SPLIT);  // == cluster rank (cluster dims (SPLIT,1,1))
  const int64_t tn = tile / tiles_m, tm = tile % tiles_m;
  const int64_t m0 = tm * C::BT, n0 = tn * C::BN;
  const int tid = threadIdx.x;
  const int ktiles = (int)((p.k + C::BK - 1) / C::BK);
  const int per = (ktiles + C::SPLIT - 1) / C::SPLIT;
  const int kt0 = min(ktiles, rank * per);
  const int kbase = kt0 * C::BK;
  auto tile_k0 = [&](int j) { return kbase + j * C::BK; };  // the CTA's j-th k-tile
  // Stream-K: this CTA's run of units u = tile * ktiles + k-tile is [sk_u0, sk_u0 + nt).
  const int64_t sk_units = C::SK > 0 ? tiles_m * ((p.n + C::BN - 1) / C::BN) * ktiles : 0;
  const int sk_u0 = C::SK > 0 ? sk_start((int)blockIdx.x, sk_units, p.sk_ctas) : 0;
  const int nt = C::SK > 0 ? sk_start((int)blockIdx.x + 1, sk_units, p.sk_ctas) - sk_u0
                           : min(ktiles, kt0 + per) - kt0;
  const uint32_t red_bar = empty_bar + 8 * S;  // SK: partial-tile copies

  if (tid == 0) {
#pragma unroll 1
    for (int s = 0; s < S; ++s) {
      // scale-store arrivals (+ cp.async arrivals; TMA completes transaction bytes instead)
      mbar_init(full_bar + 8 * s, kTma ? C::kProducers : 2 * C::kProducers);
      mbar_init(empty_bar + 8 * s, C::kGroupThreads / 32);  // the warps of the one group that reads it
    }
    if constexpr (C::SK > 0) mbar_init(red_bar, 1);
    if constexpr (C::RS > 0) {  // receive barrier: one phase, the peers' bytes for the groups this rank owns
      int own = 0;
      for (int j = rank; j < C::BT / 8; j += C::SPLIT) ++own;
      mbar_init(red_bar, 1);
      mbar_arrive_expect_tx(red_bar, (uint32_t)((C::SPLIT - 1) * C::WGM * own * C::kGroupThreads * 16));
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  // RS: the peers' receive barriers must be initialised before this CTA's first st.async (the wait
  // comes right before the exchange, long after every CTA of the cluster arrived).
  if constexpr (C::RS > 0) asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
  // PDL: the next kernel is released only once this CTA's producer has issued its last copy (its
  // CTAs would otherwise take the SM slots this grid's later CTAs need; measured: 2-CTA/SM configs
  // ran 1.3-1.5x slower with an early trigger).

  if (tid < C::kProducers) {
    // ---------------- producer warpgroup ----------------
    setmaxnreg_dec<C::kRegP>();
    const int pt = tid;
    if constexpr (C::SK > 0) {  // stream-K (TMA only): thread 0 issues, every producer thread arrives
      if constexpr (kTma) {
        constexpr uint32_t kTxBytes = C::kA + C::kB;
        const int tms = (int)tiles_m;
        auto at = [&](int j, int& k0, int& mm, int& nn) {  // step j -> its tile's origin and k
          const int u = sk_u0 + j, tl = u / ktiles, tn = tl / tms;
          k0 = (u - tl * ktiles) * C::BK;
          mm = (tl - tn * tms) * C::BT;
          nn = tn * C::BN;
        };
        const int pro = min(nt, S);
        if (p.pdl) {  // weights of the first stages are independent of earlier kernels
          if (pt == 0) {
#pragma unroll 1
            for (int j = 0; j < pro; ++j) {
              int k0, mm, nn;
              at(j, k0, mm, nn);
              mbar_expect_tx(full_bar + 8 * j, kTxBytes);
              tma_load_2d(base_u32 + j * C::kStageBytes + C::kA, &tm_b, k0 >> 1, nn, full_bar + 8 * j);
            }
          }
          griddep_wait();
        }
        int s_in = 0, ph_in = 0;
#pragma unroll 1
        for (int j = 0; j < nt; ++j) {
          if (j >= S) mbar_wait(empty_bar + 8 * s_in, ph_in ^ 1);
          if (pt == 0) {
            int k0, mm, nn;
            at(j, k0, mm, nn);
            const uint32_t st = base_u32 + s_in * C::kStageBytes, bar = full_bar + 8 * s_in;
            const bool a_once = (p.wg_diag & 16) && j >= S;  // DIAGNOSTIC: stale A tiles (wrong Y)
            if (!(p.pdl && j < pro)) {
              mbar_expect_tx(bar, a_once ? (uint32_t)C::kB : kTxBytes);
              tma_load_2d(st + C::kA, &tm_b, k0 >> 1, nn, bar);
            }
            if (!a_once) {
#pragma unroll
              for (int sub = 0; sub < C::KT; ++sub) tma_load_2d(st + sub * C::BT * 128, &tm_a, k0 + 64 * sub, mm, bar);
            }
          }
          mbar_arrive(full_bar + 8 * s_in);
          if (++s_in == S) { s_in = 0; ph_in ^= 1; }
        }
        if (p.pdl) griddep_launch_dependents();
      }
      return;
    }
    const WsProducer<C, kAVec> ld(p, pt, m0, n0);
    const int pro = min(nt, S);
    constexpr uint32_t kTxBytes = C::kA + C::kB;  // whole boxes, out-of-bounds parts zero-filled
    auto tma_b = [&](uint32_t st, int k0, uint32_t bar) {
      tma_load_2d(st + C::kA, &tm_b, k0 >> 1, (int)n0, bar);
    };
    auto tma_a = [&](uint32_t st, int k0, uint32_t bar) {
#pragma unroll
      for (int sub = 0; sub < C::KT; ++sub) tma_load_2d(st + sub * C::BT * 128, &tm_a, k0 + 64 * sub, (int)m0, bar);
    };
    if (p.pdl) {  // weights of the first stages are independent of earlier kernels
#pragma unroll 1
      for (int j = 0; j < pro; ++j) {
        if constexpr (kTma) {
          if (pt == 0) {
            mbar_expect_tx(full_bar + 8 * j, kTxBytes);
            tma_b(base_u32 + j * C::kStageBytes, tile_k0(j), full_bar + 8 * j);
          }
        } else {
          ld.issue_b(p, base_u32 + j * C::kStageBytes, tile_k0(j));
        }
      }
      griddep_wait();
    }
    // Issue of tile j's copies (TMA with its byte count, or cp.async with the noinc arrive).
    auto issue = [&](uint32_t st, int k0, int j, uint32_t bar) {
      if constexpr (kTma) {
        if (pt == 0) {
          if (!(p.pdl && j < pro)) {
            mbar_expect_tx(bar, kTxBytes);
            tma_b(st, k0, bar);
          }
          tma_a(st, k0, bar);
        }
      } else {
        if (!(p.pdl && j < pro)) ld.issue_b(p, st, k0);
        ld.issue_a(p, st, k0);
        cp_async_mbar_arrive_noinc(bar);
      }
    };
    if (p.bs >= C::BK) {  // one block per tile: the consumers load the scales themselves
      int s_in = 0, ph_in = 0;
#pragma unroll 1
      for (int j = 0; j < nt; ++j) {
        if (j >= S) mbar_wait(empty_bar + 8 * s_in, ph_in ^ 1);
        issue(base_u32 + s_in * C::kStageBytes, tile_k0(j), j, full_bar + 8 * s_in);
        mbar_arrive(full_bar + 8 * s_in);
        if (++s_in == S) { s_in = 0; ph_in ^= 1; }
      }
      if (p.pdl) griddep_launch_dependents();
      if constexpr (C::RS > 0) {
        asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
      } else if constexpr (C::SPLIT > 1) {
        namespace cg = cooperative_groups;
        cg::this_cluster().sync();
        cg::this_cluster().sync();
      }
      return;
    }
    uint32_t rsc[C::kLag][C::kSPer], rzb[C::kLag][C::kSPer];
    int s_in = 0, ph_in = 0;    // stage / phase of tile j
    int s_out = 0;              // stage of tile j - C::kLag
#pragma unroll 1
    for (int j0 = 0; j0 < nt + C::kLag; j0 += C::kLag) {
#pragma unroll
      for (int r = 0; r < C::kLag; ++r) {
        const int j = j0 + r;
        if (j >= C::kLag && j - C::kLag < nt) {  // scales of tile j - C::kLag (loaded at iteration j - C::kLag)
          ld.store_scales(p, rsc[r], rzb[r], base + s_out * C::kStageBytes, pt, tile_k0(j - C::kLag));
          if (!kAVec) fence_proxy_async_smem();  // activations written by st.shared, read by wgmma
          mbar_arrive(full_bar + 8 * s_out);
          s_out = s_out + 1 == S ? 0 : s_out + 1;
        }
        if (j < nt) {
          if (j >= S) mbar_wait(empty_bar + 8 * s_in, ph_in ^ 1);
          const uint32_t st = base_u32 + s_in * C::kStageBytes;
          const int k0 = tile_k0(j);
          issue(st, k0, j, full_bar + 8 * s_in);
          ld.load_scales(p, rsc[r], rzb[r], k0);
          if (++s_in == S) { s_in = 0; ph_in ^= 1; }
        }
      }
    }
    if (p.pdl) griddep_launch_dependents();
    if constexpr (C::RS > 0) {
      asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
    } else if constexpr (C::SPLIT > 1) {  // the cluster barriers of the reduction count every thread
      namespace cg = cooperative_groups;
      cg::this_cluster().sync();
      cg::this_cluster().sync();
    }
    return;
  }

  // ---------------- consumer warpgroups ----------------
  setmaxnreg_inc<C::kRegC>();
  if (p.pdl) griddep_wait();  // Y may still be read by the previous kernel
  const int ct = tid - C::kProducers, lane = ct & 31, warp = ct >> 5;
  // consumer group: local k-tiles grp, grp + KIN, ... (a literal 0 for KIN 1, so that the stage
  // index, its addresses and the wgmma descriptors are provably warp-uniform)
  const int grp = C::KIN > 1 ? warp >> 3 : 0;
  const int wg = (warp >> 2) & 1, wq = warp & 3, g = lane >> 2, t = lane & 3;
  const uint32_t sel = (uint32_t)t | 0x4040u | ((uint32_t)t << 8);  // bytes (t, 0, t, 0)
  const int bswz = (p.wg_diag & 2) ? 0 : ws_b_swz<C::KT>(g);     // every row this thread reads is g mod 8
  float acc[C::WGM][C::NACC];  // the first wgmma overwrites (scale-d 0)

  // Block size >= BK (one block per tile): each thread loads the scale / zero-point byte of its
  // rows itself, one tile ahead (the load of tile i+1 is issued after tile i's values are used,
  // so nothing waits on it before tile i+1), and the producer stages none.
  const bool direct = p.bs >= C::BK;
  const uint16_t* srow[C::WGM][2];
  const uint8_t* zrow[C::WGM][2];
  uint32_t pre_s[C::WGM][2], pre_z[C::WGM][2];
#pragma unroll
  for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t r = n0 + (wg * C::WGM + mt) * 64 + wq * 16 + g + 8 * h;
      const int64_t rr = r < p.n ? r : 0;
      srow[mt][h] = static_cast<const uint16_t*>(p.s) + rr * p.nb;
      zrow[mt][h] = p.z ? p.z + rr * p.zcols : nullptr;
      pre_s[mt][h] = 0u;
      pre_z[mt][h] = 0x88u;
      if constexpr (C::ILV > 0) {  // keep the row pointers live (ptxas rebuilt them from p per tile)
        asm volatile("" : "+l"(srow[mt][h]));
        asm volatile("" : "+l"(zrow[mt][h]));
      }
    }
  auto fetch_scales = [&](int k0) {  // the k-tile starting at k0
    const int kb = k0 >> p.bs_shift;
    if constexpr (C::ILV > 0) {  // zero points present or not: one kernel-uniform test
      const bool has_z = p.z != nullptr;
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          pre_s[mt][h] = ldg_u16(srow[mt][h] + kb);
          pre_z[mt][h] = has_z ? (uint32_t)__ldg(zrow[mt][h] + (kb >> 1)) : 0x88u;
        }
      return;
    }
#pragma unroll
    for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        pre_s[mt][h] = ldg_u16(srow[mt][h] + kb);
        pre_z[mt][h] = zrow[mt][h] ? (uint32_t)__ldg(zrow[mt][h] + (kb >> 1)) : 0x88u;
      }
  };
  if (C::SK == 0 && direct && grp < nt) fetch_scales(tile_k0(grp));
  int s_c = grp, ph_c = 0, s_prev = 0;  // stage / phase of tile i (KIN <= STAGES)
  if constexpr (C::ILV > 0) {
    // ILV configs: per-tile scale / zero-point operands computed once per row (block size >= BK:
    // one block per tile), and (ILV 2) each 16-k step dequantized right before its own wgmma, so
    // the tensor cores start after 1/(4 KT) of the tile's dequant instead of all of it.
    // One k-tile (starting at k0): first = the first of an accumulation (scale-d 0), rel = release
    // the previous tile's stage after its wgmmas retired, next_k0 >= 0: prefetch that tile's scales.
    auto tile_step = [&](auto dtag, int k0, bool first, bool rel, int next_k0) {
      constexpr bool kDirect = decltype(dtag)::value;
      {
        mbar_wait(full_bar + 8 * s_c, ph_c);
        if (!kTma) fence_proxy_async_smem();
        const uint8_t* sb = base + s_c * C::kStageBytes + C::kA;
        const uint16_t* ss = reinterpret_cast<const uint16_t*>(sb + C::kB);
        const uint8_t* sz = sb + C::kB + C::kS;
        const uint32_t a_addr = base_u32 + s_c * C::kStageBytes;
        uint4 w[C::WGM][2][2 * C::KT];
        uint2 sv[C::WGM][2][C::KT];
        uint32_t zv[C::WGM][2][C::KT];
        uint32_t dsc[C::WGM][2], dsb[C::WGM][2];
#pragma unroll
        for (int mt = 0; mt < C::WGM; ++mt) {
          const int r0 = (wg * C::WGM + mt) * 64 + wq * 16 + g;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int r = r0 + 8 * h;
#pragma unroll
            for (int q = 0; q < 2 * C::KT; ++q)
              w[mt][h][q] = *reinterpret_cast<const uint4*>(sb + r * 32 * C::KT + 16 * (q ^ bswz));
            if constexpr (!kDirect) {
#pragma unroll
              for (int q = 0; q < C::KT; ++q) {
                sv[mt][h][q] = *reinterpret_cast<const uint2*>(ss + r * 4 * C::KT + 4 * q);
                zv[mt][h][q] = *reinterpret_cast<const uint32_t*>(sz + r * 4 * C::KT + 4 * q);
              }
            }
          }
        }
        if constexpr (kDirect) {
          const int sh = ((k0 >> p.bs_shift) & 1) * 4;
#pragma unroll
          for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              dsc[mt][h] = pre_s[mt][h] | (pre_s[mt][h] << 16);
              dsb[mt][h] = zp_sub_bits((pre_z[mt][h] >> sh) & 0xFu);
            }
          if (next_k0 >= 0) fetch_scales(next_k0);
        }
        wg_wait<0>();  // tile i-1's wgmmas retired: its fragment registers and stage are free
        if (rel) {
          __syncwarp();
          if (lane == 0) mbar_arrive(empty_bar + 8 * s_prev);
        }
        uint32_t fr[4 * C::KT][C::WGM][4];
        auto dq_step = [&](int s) {
          const int sub = s >> 2, s4 = s & 3;
#pragma unroll
          for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              uint32_t sc, sub_bits;
              if constexpr (kDirect) {
                sc = dsc[mt][h];
                sub_bits = dsb[mt][h];
              } else {
                const uint32_t hv = (s4 < 2) ? sv[mt][h][sub].x : sv[mt][h][sub].y;
                sc = __byte_perm(hv, 0u, (s4 & 1) ? 0x3232u : 0x1010u);
                sub_bits = zp_sub_bits((zv[mt][h][sub] >> (8 * s4)) & 0xFu);
              }
              const uint4& wv = w[mt][h][s >> 1];
              const uint32_t xlo = word_of(wv, 2 * (s & 1)), xhi = word_of(wv, 2 * (s & 1) + 1);
              fr[s][mt][h] = hmul2_u32(dq_pair_sel(xlo, sel, sub_bits), sc);
              fr[s][mt][2 + h] = hmul2_u32(dq_pair_sel(xhi, sel, sub_bits), sc);
            }
        };
        // Descriptor low word of this stage's A tile; the steps add their 16-byte offsets to it
        // (smem addresses < 256 KB: no carry out of the 14-bit start-address field).
        const uint32_t dlo = ((a_addr & 0x3FFFFu) >> 4) | (1u << 16);
        auto mma_step = [&](int s) {
          const int sub = s >> 2, s4 = s & 3;
          const uint64_t desc =
              (uint64_t)(dlo + (uint32_t)((sub * C::BT * 128 + 32 * s4) >> 4)) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
#pragma unroll
          for (int mt = 0; mt < C::WGM; ++mt) {
            wg_fence_acc(acc[mt]);
            wgmma_bt<C::BT>(acc[mt], fr[s][mt], desc, (!first || s != 0) ? 1 : 0);
            wg_fence_acc(acc[mt]);
          }
        };
        if constexpr (C::ILV >= 2) {
#pragma unroll
          for (int s = 0; s < 4 * C::KT; ++s) {
            dq_step(s);
            wg_fence();
            mma_step(s);
          }
        } else {
#pragma unroll
          for (int s = 0; s < 4 * C::KT; ++s) dq_step(s);
          wg_fence();
#pragma unroll
          for (int s = 0; s < 4 * C::KT; ++s) mma_step(s);
        }
        wg_commit();
        s_prev = s_c;
        s_c += C::KIN;
        if (s_c >= S) { s_c -= S; ph_c ^= 1; }
      }
    };
    if constexpr (C::SK > 0) {  // stream-K (block size >= BK: the launcher checks): segments of the run
      const int u1 = sk_u0 + nt;
      uint32_t red_ph = 0;
      bool pend = false;  // a tile's stage is still held (released after its wgmmas retired)
#pragma unroll 1
      for (int u = sk_u0; u < u1;) {
        const int tl = u / ktiles, kb = u - tl * ktiles;
        const int ke = min(ktiles, kb + (u1 - u)), n_it = ke - kb;
        const int64_t sm0 = (tl % tiles_m) * C::BT, sn0 = (tl / tiles_m) * C::BN;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t r = sn0 + wg * 64 + wq * 16 + g + 8 * h;
          const int64_t rr = r < p.n ? r : 0;
          srow[0][h] = static_cast<const uint16_t*>(p.s) + rr * p.nb;
          zrow[0][h] = p.z ? p.z + rr * p.zcols : nullptr;
          asm volatile("" : "+l"(srow[0][h]));
          asm volatile("" : "+l"(zrow[0][h]));
        }
        fetch_scales(kb * C::BK);
#pragma unroll 1
        for (int i = 0; i < n_it; ++i) {
          tile_step(std::true_type{}, (kb + i) * C::BK, i == 0, pend, i + 1 < n_it ? (kb + i + 1) * C::BK : -1);
          pend = true;
        }
        wg_wait<0>();
        __syncwarp();
        if (lane == 0) mbar_arrive(empty_bar + 8 * s_prev);
        pend = false;
        u += n_it;
        if (u == u1 && p.pdl) griddep_launch_dependents();
        wg_fence_acc(acc[0]);
        if (kb != 0 && (p.wg_diag & 4)) continue;  // DIAGNOSTIC: no partial-tile exchange (wrong Y)
        if (kb != 0) {  // the run starts inside this tile: publish the partial tile (thread-major float4s)
          float4* slot = reinterpret_cast<float4*>(p.sk_ws) + (size_t)blockIdx.x * (C::kSlotBytes / 16);
#pragma unroll
          for (int e = 0; e < C::NACC / 4; ++e)
            __stcg(slot + e * C::kGroupThreads + ct,
                   make_float4(acc[0][4 * e], acc[0][4 * e + 1], acc[0][4 * e + 2], acc[0][4 * e + 3]));
          asm volatile("bar.sync 1, %0;" ::"n"(C::kConsumers) : "memory");
          if (ct == 0) {
            __threadfence();
            st_release_gpu(p.sk_flags + blockIdx.x, 1);
          }
          continue;
        }
        if (ke < ktiles && !(p.wg_diag & 4)) {  // this CTA holds the tile's first k-tiles; later CTAs the rest
          // (the run ends here: every stage is free and becomes the receive buffer)
          const int64_t tile_end = (int64_t)(tl + 1) * ktiles;
          asm volatile("bar.sync 1, %0;" ::"n"(C::kConsumers) : "memory");
#pragma unroll 1
          for (int c2 = (int)blockIdx.x + 1; c2 < p.sk_ctas && sk_start(c2, sk_units, p.sk_ctas) < tile_end; ++c2) {
            if (ct == 0) {
              while (ld_acquire_gpu(p.sk_flags + c2) == 0) {
              }
              st_relaxed_gpu(p.sk_flags + c2, 0);  // the only reader: ready for the next launch
              fence_proxy_async_global();
              fence_proxy_async_smem();
              constexpr int kChunk = C::kSlotBytes / 4;
              const uint8_t* src = reinterpret_cast<const uint8_t*>(p.sk_ws) + (size_t)c2 * C::kSlotBytes;
              mbar_expect_tx(red_bar, C::kSlotBytes);
#pragma unroll
              for (int q = 0; q < 4; ++q) bulk_load_1d(base_u32 + q * kChunk, src + q * kChunk, kChunk, red_bar);
              mbar_arrive(red_bar);
            }
            mbar_wait(red_bar, red_ph);
            red_ph ^= 1;
            const float4* rb = reinterpret_cast<const float4*>(base);
#pragma unroll
            for (int e = 0; e < C::NACC / 4; ++e) {
              const float4 v = rb[e * C::kGroupThreads + ct];
              acc[0][4 * e] += v.x;
              acc[0][4 * e + 1] += v.y;
              acc[0][4 * e + 2] += v.z;
              acc[0][4 * e + 3] += v.w;
            }
            asm volatile("bar.sync 1, %0;" ::"n"(C::kConsumers) : "memory");  // buffer read before refill
          }
        }
        store_wgmma_tile<C>(p, acc, sm0, sn0, wg, wq, g, t);
      }
      return;
    }
    auto consume = [&](auto dtag) {
#pragma unroll 1
      for (int i = grp; i < nt; i += C::KIN)
        tile_step(dtag, tile_k0(i), i == grp, i > grp, i + C::KIN < nt ? tile_k0(i + C::KIN) : -1);
    };
    if (direct) consume(std::true_type{});
    else consume(std::false_type{});
  } else {
#pragma unroll 1
  for (int i = grp; i < nt; i += C::KIN) {
    mbar_wait(full_bar + 8 * s_c, ph_c);
    if (!kTma) fence_proxy_async_smem();  // cp.async writes (generic proxy) -> wgmma reads (async proxy)
    const uint8_t* sb = base + s_c * C::kStageBytes + C::kA;
    const uint16_t* ss = reinterpret_cast<const uint16_t*>(sb + C::kB);
    const uint8_t* sz = sb + C::kB + C::kS;
    const uint32_t a_addr = base_u32 + s_c * C::kStageBytes;
    uint4 w[C::WGM][2][2 * C::KT];
    uint2 sv[C::WGM][2][C::KT];
    uint32_t zv[C::WGM][2][C::KT];
#pragma unroll
    for (int mt = 0; mt < C::WGM; ++mt) {
      const int r0 = (wg * C::WGM + mt) * 64 + wq * 16 + g;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = r0 + 8 * h;
#pragma unroll
        for (int q = 0; q < 2 * C::KT; ++q) w[mt][h][q] = *reinterpret_cast<const uint4*>(sb + r * 32 * C::KT + 16 * (q ^ bswz));
        if (!direct) {
#pragma unroll
          for (int q = 0; q < C::KT; ++q) {
            sv[mt][h][q] = *reinterpret_cast<const uint2*>(ss + r * 4 * C::KT + 4 * q);
            zv[mt][h][q] = *reinterpret_cast<const uint32_t*>(sz + r * 4 * C::KT + 4 * q);
          }
        }
      }
    }
    if (direct) {  // the same per-16-k-step format as the staged values: every step has the tile's block
      const int sh = ((tile_k0(i) >> p.bs_shift) & 1) * 4;
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t s2 = pre_s[mt][h] | (pre_s[mt][h] << 16);
          const uint32_t z4 = ((pre_z[mt][h] >> sh) & 0xFu) * 0x01010101u;
#pragma unroll
          for (int q = 0; q < C::KT; ++q) {
            sv[mt][h][q] = make_uint2(s2, s2);
            zv[mt][h][q] = z4;
          }
        }
      if (i + C::KIN < nt) fetch_scales(tile_k0(i + C::KIN));
    }
    // Tile i-1's wgmmas (one group) must retire before its fragment registers are rewritten
    // (wgmma reads register operands asynchronously; ptxas turns any earlier rewrite into a full
    // wait after every wgmma, see ops/cuda/NOTES.md). The full-barrier wait and the shared-memory
    // loads above overlap them, and the other consumer warpgroup's wgmmas keep the tensor cores
    // busy while this one dequantizes.
    wg_wait<0>();
    if (i > grp) {  // the group's previous tile's stage is free
      __syncwarp();
      if (lane == 0) mbar_arrive(empty_bar + 8 * s_prev);
    }
    uint32_t fr[4 * C::KT][C::WGM][4];
#pragma unroll
    for (int s = 0; s < 4 * C::KT; ++s) {
      const int sub = s >> 2, s4 = s & 3;
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t hv = (s4 < 2) ? sv[mt][h][sub].x : sv[mt][h][sub].y;
          const uint32_t sc = __byte_perm(hv, 0u, (s4 & 1) ? 0x3232u : 0x1010u);
          const uint32_t sub_bits = zp_sub_bits((zv[mt][h][sub] >> (8 * s4)) & 0xFu);
          const uint4& wv = w[mt][h][s >> 1];
          const uint32_t xlo = word_of(wv, 2 * (s & 1)), xhi = word_of(wv, 2 * (s & 1) + 1);
          fr[s][mt][h] = hmul2_u32(dq_pair_sel(xlo, sel, sub_bits), sc);
          fr[s][mt][2 + h] = hmul2_u32(dq_pair_sel(xhi, sel, sub_bits), sc);
        }
      }
    }
    wg_fence();
#pragma unroll
    for (int s = 0; s < 4 * C::KT; ++s) {
      const int sub = s >> 2, s4 = s & 3;
#pragma unroll
      for (int mt = 0; mt < C::WGM; ++mt) {
        wg_fence_acc(acc[mt]);
        wgmma_bt<C::BT>(acc[mt], fr[s][mt], wg_desc_sw128(a_addr + sub * C::BT * 128 + 32 * s4),
                        (i != grp || s != 0) ? 1 : 0);
        wg_fence_acc(acc[mt]);
      }
    }
    wg_commit();
    s_prev = s_c;
    s_c += C::KIN;
    if (s_c >= S) { s_c -= S; ph_c ^= 1; }
  }
  }
  if (p.pdl) griddep_launch_dependents();
  wg_wait<0>();
#pragma unroll
  for (int mt = 0; mt < C::WGM; ++mt) wg_fence_acc(acc[mt]);
  if (grp >= nt) {  // no tile for this group
#pragma unroll
    for (int a = 0; a < C::WGM; ++a)
#pragma unroll
      for (int e = 0; e < C::NACC; ++e) acc[a][e] = 0.f;
  }

  const int gt = ct & (C::kGroupThreads - 1);  // this thread's index inside its group
  if constexpr (C::RS > 0) {  // push-form split-K exchange (see WsCfg::RS)
    constexpr int G = C::BT / 8, GO = C::kOwnGroups;
    const uint32_t rbuf = base_u32 + C::kPipeBytes;
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");  // peers' receive barriers exist
#pragma unroll
    for (int r = 1; r < C::SPLIT; ++r) {
      const int q = rank + r < C::SPLIT ? rank + r : rank + r - C::SPLIT;  // receiver
      const int slot = C::SPLIT - 1 - r;  // = (rank - q - 1) mod SPLIT: the receiver's slot of this sender
      const uint32_t rb = mapa_rank(rbuf, q), rbar = mapa_rank(red_bar, q);
#pragma unroll
      for (int a = 0; a < C::WGM; ++a)
#pragma unroll
        for (int j = 0; j < G; ++j)
          if (j % C::SPLIT == q)
            st_async_v4(rb + (uint32_t)((((slot * C::WGM + a) * GO + j / C::SPLIT) * C::kGroupThreads + gt) * 16),
                        acc[a][4 * j], acc[a][4 * j + 1], acc[a][4 * j + 2], acc[a][4 * j + 3], rbar);
    }
    mbar_wait(red_bar, 0);
    const float4* rv = reinterpret_cast<const float4*>(base + C::kPipeBytes);
#pragma unroll 1
    for (int slot = 0; slot < C::SPLIT - 1; ++slot)  // senders rank+1, rank+2, ...: a fixed order
#pragma unroll
      for (int a = 0; a < C::WGM; ++a)
#pragma unroll
        for (int j = 0; j < G; ++j)
          if (j % C::SPLIT == rank) {
            const float4 v = rv[((slot * C::WGM + a) * GO + j / C::SPLIT) * C::kGroupThreads + gt];
            acc[a][4 * j] += v.x;
            acc[a][4 * j + 1] += v.y;
            acc[a][4 * j + 2] += v.z;
            acc[a][4 * j + 3] += v.w;
          }
    store_wgmma_tile<C>(p, acc, m0, n0, wg, wq, g, t, rank, C::SPLIT);
    return;
  }
  if constexpr (C::SPLIT > 1 || C::KIN > 1)  // every consumer left the pipeline: the stages are free
    asm volatile("bar.sync 1, %0;" ::"n"(C::kConsumers) : "memory");
  if constexpr (C::KIN > 1) {  // groups 1.. add their accumulators into group 0's
    float* red = reinterpret_cast<float*>(base);
    constexpr int kStride = C::kGroupThreads;
    if (grp > 0) {
#pragma unroll
      for (int a = 0; a < C::WGM; ++a)
#pragma unroll
        for (int e = 0; e < C::NACC; ++e) red[(((grp - 1) * C::WGM + a) * C::NACC + e) * kStride + gt] = acc[a][e];
    }
    asm volatile("bar.sync 1, %0;" ::"n"(C::kConsumers) : "memory");
    if (grp > 0) {
      if constexpr (C::SPLIT > 1) {  // the cluster barriers of the reduction count every thread
        namespace cg = cooperative_groups;
        cg::this_cluster().sync();
        cg::this_cluster().sync();
      }
      return;
    }
#pragma unroll 1
    for (int r = 0; r < C::KIN - 1; ++r)
#pragma unroll
      for (int a = 0; a < C::WGM; ++a)
#pragma unroll
        for (int e = 0; e < C::NACC; ++e) acc[a][e] += red[((r * C::WGM + a) * C::NACC + e) * kStride + gt];
  }
  if constexpr (C::SPLIT > 1) {  // group 0 only; each thread rewrites just the words it read above
    cluster_reduce_scatter_acc<C>(acc, reinterpret_cast<float*>(base), rank, C::kGroupThreads, gt);
    store_wgmma_tile<C>(p, acc, m0, n0, wg, wq, g, t, rank, C::SPLIT);
    return;
  }

  store_wgmma_tile<C>(p, acc, m0, n0, wg, wq, g, t);
#else
  __trap();
#endif
}

// Warp-specialized configurations: index kNumWgConfigs + i of Path::kWgmma.
//                BT WGM SPLIT STAGES KT CTAs/SM [KIN consumer groups]
using Ws0 = WsCfg<64, 1, 4, 8, 1, 1>;
using Ws1 = WsCfg<64, 1, 8, 6, 1, 2>;
using Ws2 = WsCfg<128, 1, 1, 6, 1, 1>;
using Ws3 = WsCfg<64, 1, 3, 6, 1, 2>;
using Ws4 = WsCfg<128, 1, 2, 6, 1, 1>;
using Ws5 = WsCfg<256, 1, 4, 5, 1, 1>;
using Ws6 = WsCfg<256, 1, 3, 5, 1, 1>;
using Ws7 = WsCfg<256, 1, 1, 5, 1, 1>;
using Ws8 = WsCfg<64, 1, 1, 6, 1, 2>;
using Ws9 = WsCfg<64, 1, 2, 6, 1, 2>;
using Ws10 = WsCfg<64, 1, 1, 12, 1, 1, 2>;
using Ws11 = WsCfg<64, 1, 3, 12, 1, 1, 2>;
using Ws12 = WsCfg<64, 1, 3, 8, 2, 1>;
using Ws13 = WsCfg<64, 1, 1, 8, 2, 1>;
using Ws14 = WsCfg<128, 1, 2, 5, 2, 1>;
//                BT WGM SPLIT STAGES KT CTAs/SM KIN ILV (consumer loop variant, see WsCfg)
using Ws15 = WsCfg<64, 1, 3, 8, 2, 1, 1, 2>;   // = Ws12, ILV 2
using Ws16 = WsCfg<64, 1, 1, 8, 2, 1, 1, 2>;   // = Ws13, ILV 2
using Ws17 = WsCfg<128, 1, 2, 5, 2, 1, 1, 2>;  // = Ws14, ILV 2
using Ws18 = WsCfg<64, 1, 3, 8, 2, 1, 1, 1>;   // = Ws12, ILV 1
using Ws19 = WsCfg<128, 1, 2, 5, 2, 1, 1, 1>;  // = Ws14, ILV 1
using Ws20 = WsCfg<256, 1, 1, 5, 1, 1, 1, 2>;  // = Ws7, ILV 2
using Ws21 = WsCfg<256, 1, 1, 5, 1, 1, 1, 1>;  // = Ws7, ILV 1
//                BT WGM SPLIT STAGES KT CTAs/SM KIN ILV SK (stream-K schedule, see WsCfg)
using Ws22 = WsCfg<256, 1, 1, 5, 1, 1, 1, 2, 1>;  // = Ws20, stream-K
//                BT WGM SPLIT STAGES KT CTAs/SM KIN ILV SK RS (push-form split-K exchange, see WsCfg)
using Ws23 = WsCfg<128, 1, 2, 4, 2, 1, 1, 1, 0, 1>;  // = Ws19 with the push exchange (4 stages + receive buffer)
using Ws24 = WsCfg<64, 1, 3, 7, 2, 1, 1, 2, 0, 1>;   // = Ws15 with the push exchange (7 stages + receive buffer)
constexpr int kNumWsConfigs = 25;
constexpr int kSkFlagBytes = 4096;              // workspace: one int flag per CTA (<= 1024 CTAs) ...
constexpr int64_t kSkMaxSlotBytes = 256 * 128 * 4;  // ... then one partial tile per CTA (largest SK tile)

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

// The wgmma path runs on sm_90 (exactly: sm_90a code) from a build that has sm_90a code.
bool WgmmaAvailable(const DeviceInfo& dev) {
#if defined(ONNXQ_HAVE_SM90A)
  return dev.major == 9;
#else
  (void)dev;
  return false;
#endif
}

template <class C>
int LaunchWg(const KernelParams& p, bool a_vec, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
             size_t len) {
  static std::atomic<uint64_t> smem_done[2];
  if (!WgmmaAvailable(dev))
    return Fail(err, len, kInvalidArgument, "the wgmma path needs an sm_90 GPU and a build with sm_90a code");
  const int64_t tiles = ((p.m + C::BT - 1) / C::BT) * ((p.n + C::BN - 1) / C::BN) * C::SPLIT;
  if (tiles > 0x7fffffffLL) return Fail(err, len, kInvalidArgument, "problem too large: %lld tiles", (long long)tiles);
  auto k = a_vec ? wgmma_f16_kernel<C, true> : wgmma_f16_kernel<C, false>;
  int rc = EnsureSmem(reinterpret_cast<const void*>(k), C::kSmemBytes, &smem_done[a_vec ? 1 : 0], err, len);
  if (rc != kOk) return rc;
  return Launch(k, dim3(static_cast<unsigned>(tiles)), dim3(C::kThreads), C::kSmemBytes, stream, pdl, C::SPLIT, p, err,
                len);
}

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
bool EncodeTensorMap2d(CUtensorMap* map, CUtensorMapDataType type, void* addr, const cuuint64_t* dim,
                       const cuuint64_t* stride, const cuuint32_t* box, const cuuint32_t* estride,
                       CUtensorMapSwizzle swizzle) {
  static std::atomic<void*> fn{nullptr};
  static std::atomic<int> state{0};  // 0 unknown, 1 available, 2 unavailable
  if (state.load(std::memory_order_acquire) == 0) {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q);
    const bool ok = e == cudaSuccess && q == cudaDriverEntryPointSuccess && f != nullptr;
    if (!ok) cudaGetLastError();
    fn.store(f, std::memory_order_relaxed);
    state.store(ok ? 1 : 2, std::memory_order_release);
  }
  if (state.load(std::memory_order_acquire) != 1) return false;
  auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn.load(std::memory_order_relaxed));
  return encode(map, type, 2, addr, dim, stride, box, estride, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// Stream-K grid: CTA c takes units [c U / C, (c+1) U / C) of the U = tiles x ktiles (tile, k-tile)
// units; C <= #SMs (one CTA per SM: a CTA may wait for later CTAs' partial tiles, so all of them
// must be resident at once). C = the largest such count that leaves every tile at most two
// contributors (one partial-tile read per finished tile; measured on H100: up to 3-4 contributors
// at C = #SMs cost 10 µs more at 4096x11008 / 4096² M=256-512), else min(#SMs, U).
int SkCtas(int64_t tiles, int64_t ktiles, int sms) {
  const int64_t units = tiles * ktiles;
  const int c1 = (int)std::min<int64_t>(sms, units);
  // A tile has 1 + (run boundaries strictly inside it) contributors: at most two <=> no two
  // consecutive interior boundaries fall into the same tile.
  for (int c = c1; c >= (c1 + 1) / 2 && c >= 1; --c) {
    bool ok = true;
    int64_t prev = -1;
    for (int i = 1; i < c && ok; ++i) {
      const int64_t b = (int64_t)i * units / c;
      if (b % ktiles == 0) continue;
      ok = b / ktiles != prev;
      prev = b / ktiles;
    }
    if (ok) return c;
  }
  return c1;
}

template <class C>
int LaunchWs(const KernelParams& p, bool a_vec, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
             size_t len) {
  static std::atomic<uint64_t> smem_done[2];
  if (!WgmmaAvailable(dev))
    return Fail(err, len, kInvalidArgument, "the wgmma path needs an sm_90 GPU and a build with sm_90a code");
  const int64_t tiles = ((p.m + C::BT - 1) / C::BT) * ((p.n + C::BN - 1) / C::BN) * C::SPLIT;
  if (tiles > 0x7fffffffLL) return Fail(err, len, kInvalidArgument, "problem too large: %lld tiles", (long long)tiles);
  // TMA for A and B when both have 16-byte aligned rows and the driver offers the encoder.
  CUtensorMap tm_a, tm_b;
  std::memset(&tm_a, 0, sizeof(tm_a));
  std::memset(&tm_b, 0, sizeof(tm_b));
  bool tma = a_vec && p.b_vec16 && p.m <= 0x7fffffffLL;
  if (tma) {
    const cuuint64_t a_dim[2] = {(cuuint64_t)p.k, (cuuint64_t)p.m}, a_stride[1] = {(cuuint64_t)p.k * 2};
    const cuuint32_t a_box[2] = {64, (cuuint32_t)C::BT}, ones[2] = {1, 1};
    const cuuint64_t b_dim[2] = {(cuuint64_t)p.row_bytes, (cuuint64_t)p.n}, b_stride[1] = {(cuuint64_t)p.row_bytes};
    const cuuint32_t b_box[2] = {(cuuint32_t)(32 * C::KT), (cuuint32_t)C::BN};
    tma = EncodeTensorMap2d(&tm_a, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, const_cast<void*>(p.a), a_dim, a_stride, a_box,
                            ones, CU_TENSOR_MAP_SWIZZLE_128B) &&
          EncodeTensorMap2d(&tm_b, CU_TENSOR_MAP_DATA_TYPE_UINT8, const_cast<uint8_t*>(p.b), b_dim, b_stride, b_box,
                            ones,
                            (p.wg_diag & 2) ? CU_TENSOR_MAP_SWIZZLE_NONE
                                            : (C::KT == 2 ? CU_TENSOR_MAP_SWIZZLE_64B : CU_TENSOR_MAP_SWIZZLE_32B));
  }
  using KFn = void (*)(KernelParams, CUtensorMap, CUtensorMap);
  const int variant = (a_vec ? 1 : 0) + (tma ? 2 : 0);
  KFn k = nullptr;
  KernelParams q = p;
  int64_t grid = tiles;
  if constexpr (C::SK > 0) {  // stream-K: TMA, one block per k-tile and a workspace, else the plain config
    const int64_t ktiles = (p.k + C::BK - 1) / C::BK;
    const int ctas = SkCtas(tiles, ktiles, dev.sms);
    if (!tma || p.bs < C::BK || ctas < 1 || ctas * 4 > kSkFlagBytes ||
        (int64_t)ctas * C::kSlotBytes > p.sk_ws_bytes || tiles * ktiles > 0x7fffffffLL)
      return LaunchWs<typename C::Base>(p, a_vec, dev, stream, pdl, err, len);
    q.sk_ctas = ctas;
    grid = ctas;
    k = wgmma_ws_kernel<C, true, true>;
  } else {
    const KFn kernels[4] = {wgmma_ws_kernel<C, false, false>, wgmma_ws_kernel<C, true, false>,
                            wgmma_ws_kernel<C, false, false>, wgmma_ws_kernel<C, true, true>};
    k = kernels[variant];
  }
  static std::atomic<uint64_t> smem_done4[4];
  int rc = EnsureSmem(reinterpret_cast<const void*>(k), C::kSmemBytes, &smem_done4[variant], err, len);
  if (rc != kOk) return rc;
  (void)smem_done;
  static std::atomic<int> regs[4];  // the kernel's register count (its CTA allocation), checked once
  int nr = regs[variant].load(std::memory_order_relaxed);
  if (nr == 0) {
    cudaFuncAttributes fa;
    cudaError_t e = cudaFuncGetAttributes(&fa, reinterpret_cast<const void*>(k));
    if (e != cudaSuccess) return Fail(err, len, kCudaError, "cudaFuncGetAttributes: %s", cudaGetErrorString(e));
    nr = fa.numRegs;
    regs[variant].store(nr, std::memory_order_relaxed);
  }
  if (C::kProducers * C::kRegP + C::kConsumers * C::kRegC > C::kThreads * nr)
    return Fail(err, len, kCudaError, "wgmma config built with %d registers per thread, too few for setmaxnreg", nr);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(static_cast<unsigned>(grid));
  cfg.blockDim = dim3(C::kThreads);
  cfg.dynamicSmemBytes = static_cast<size_t>(C::kSmemBytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  int na = 0;
  if (pdl) {
    attr[na].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[na].val.programmaticStreamSerializationAllowed = 1;
    ++na;
  }
  if (C::SPLIT > 1) {
    attr[na].id = cudaLaunchAttributeClusterDimension;
    attr[na].val.clusterDim.x = static_cast<unsigned>(C::SPLIT);
    attr[na].val.clusterDim.y = 1;
    attr[na].val.clusterDim.z = 1;
    ++na;
  }
  cfg.attrs = na ? attr : nullptr;
  cfg.numAttrs = na;
  cudaError_t e = cudaLaunchKernelEx(&cfg, k, q, tm_a, tm_b);
  if (e == cudaSuccess) e = cudaGetLastError();
  if (e != cudaSuccess) return Fail(err, len, kCudaError, "kernel launch failed: %s", cudaGetErrorString(e));
  return kOk;
}

// wgmma configuration for M > 16 on H100 (bench/results/cuda_int4.json, variants wg*): the
// warp-specialized kernel (configs kNumWgConfigs + i = Ws<i>). Block size >= 128 (one block per
// 128-k tile: per-tile scale operands, ILV configs): M <= 64: BT=64 with 3-way split-K while one
// CTA per SM covers the grid (Ws24 = Ws15 with the push-form split-K exchange), else unsplit while
// the grid fits one wave (Ws16); larger M: BT=128 with 2-way split-K while that fits one wave
// (Ws23 = Ws19 with the push exchange), else BT=256 unsplit (Ws20). Smaller
// blocks (producer-staged per-16-k scales; the ILV variants measured no faster there): the ILV 0
// configs Ws12 / Ws13 / Ws14 / Ws7 at the same points. M > 256, block size >= 128, where the BT=256
// tiles fill their last wave to less than 80 %: stream-K Ws22 (needs the caller's workspace, else
// it runs Ws20; measured at M=512: 7-18 % faster than the best plain config, at M <= 256 no faster).
// Grids past one wave at M <= 64: BT=64 at
// 2 CTAs/SM with 2-way split-K (Ws9) or none (Ws8). (A split-K cluster of 1-CTA/SM CTAs can run
// in two waves even below #SMs: at most 30 clusters of 4 were co-resident on the H100.)
int ChooseWgConfig(int64_t m, int64_t n, int64_t bs, const DeviceInfo& dev) {
  auto ctas = [&](int bt, int bn) { return ((m + bt - 1) / bt) * ((n + bn - 1) / bn); };
  const bool ilv = bs >= 128;
  if (m <= 64) {
    if (ctas(64, 128) * 3 <= dev.sms) return kNumWgConfigs + (ilv ? 24 : 12);
    if (ctas(64, 128) <= dev.sms) return kNumWgConfigs + (ilv ? 16 : 13);
    return ctas(64, 128) * 2 <= 2 * dev.sms ? kNumWgConfigs + 9 : kNumWgConfigs + 8;
  }
  if (ctas(128, 128) * 2 <= dev.sms) return kNumWgConfigs + (ilv ? 23 : 14);
  if (ilv && m > 256) {  // stream-K where the BT=256 tiles fill the last wave poorly (< 80 %)
    const int64_t t = ctas(256, 128), waves = (t + dev.sms - 1) / dev.sms;
    if (t * 5 < waves * dev.sms * 4) return kNumWgConfigs + 22;
  }
  return kNumWgConfigs + (ilv ? 20 : 7);
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

constexpr int kActStageMaxSmem = 96 * 1024;  // activation stage cap of the one-shot kernels

template <int NT, bool kScaleAfter, bool kZP, bool kFast, int WARPS>
int LaunchSkinnyBurstW(KernelParams p, cudaStream_t stream, bool pdl, char* err, size_t len) {
  const int64_t groups = (p.n + 15) / 16;  // one CTA per 16-column group, no persistent loop
  if (groups > 0x7fffffffLL) return Fail(err, len, kInvalidArgument, "problem too large: N=%lld", (long long)p.n);
  p.units_per_warp = (p.units + WARPS - 1) / WARPS;
  const int act_bytes = act_stage_rows(p.m, NT) * (act_stage_stride(p.units) * 2 + (kScaleAfter ? p.units * 8 : 0));
  if constexpr (kFast) {
    if ((p.skinny_cfg & 128) && act_bytes <= kActStageMaxSmem) {  // activations staged in shared memory
      static std::atomic<uint64_t> smem_done;
      auto k = skinny_burst_kernel<NT, kScaleAfter, kZP, kFast, true, WARPS>;
      int rc = EnsureSmem(reinterpret_cast<const void*>(k), kActStageMaxSmem, &smem_done, err, len);
      if (rc != kOk) return rc;
      return Launch(k, dim3(static_cast<unsigned>(groups)), dim3(WARPS * 32), act_bytes, stream, pdl, 1, p, err, len);
    }
  }
  return Launch(skinny_burst_kernel<NT, kScaleAfter, kZP, kFast, false, WARPS>, dim3(static_cast<unsigned>(groups)),
                dim3(WARPS * 32), 0, stream, pdl, 1, p, err, len);
}

template <int NT, bool kScaleAfter, bool kZP, bool kFast>
int LaunchSkinnyBurst(const KernelParams& p, cudaStream_t stream, bool pdl, char* err, size_t len) {
  return (p.skinny_cfg & 256) ? LaunchSkinnyBurstW<NT, kScaleAfter, kZP, kFast, 16>(p, stream, pdl, err, len)
                              : LaunchSkinnyBurstW<NT, kScaleAfter, kZP, kFast, 8>(p, stream, pdl, err, len);
}

template <int NT, bool kScaleAfter>
int LaunchSkinny2(const KernelParams& p, bool fast, const DeviceInfo& dev, cudaStream_t stream, bool pdl, char* err,
                  size_t len) {
  if (p.skinny_cfg & 32) {  // one-shot burst kernel
    if (p.z != nullptr)
      return fast ? LaunchSkinnyBurst<NT, kScaleAfter, true, true>(p, stream, pdl, err, len)
                  : LaunchSkinnyBurst<NT, kScaleAfter, true, false>(p, stream, pdl, err, len);
    return fast ? LaunchSkinnyBurst<NT, kScaleAfter, false, true>(p, stream, pdl, err, len)
                : LaunchSkinnyBurst<NT, kScaleAfter, false, false>(p, stream, pdl, err, len);
  }
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
  if (m <= 16) return Path::kSkinny;
  DeviceInfo dev;
  if (GetDeviceInfo(&dev, nullptr, 0) == kOk && WgmmaAvailable(dev)) return Path::kWgmma;
  return Path::kTensorCore;
}

size_t WorkspaceBytes() {
  DeviceInfo dev;
  if (GetDeviceInfo(&dev, nullptr, 0) != kOk) return 0;
  return static_cast<size_t>(kSkFlagBytes) + static_cast<size_t>(dev.sms) * static_cast<size_t>(kSkMaxSlotBytes);
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
  if (args.workspace != nullptr && args.workspace_bytes > static_cast<size_t>(kSkFlagBytes) &&
      addr(args.workspace) % 16 == 0) {
    p.sk_flags = static_cast<int*>(args.workspace);
    p.sk_ws = reinterpret_cast<float*>(static_cast<uint8_t*>(args.workspace) + kSkFlagBytes);
    p.sk_ws_bytes = static_cast<int64_t>(args.workspace_bytes) - kSkFlagBytes;
  }

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
    if (args.config > 1023) return Fail(err, len, kInvalidArgument, "unknown skinny config %d (0..1023)", args.config);
    p.skinny_cfg = args.config >= 0 ? args.config
                                    : ((m <= 8 && bs % 128 == 0) ? kSkinnyDefaultCfg : kSkinnyDefaultCfgNT2);
    return LaunchSkinny(p, a_vec, dev, stream, pdl, err, len);
  }
  if (path == Path::kWgmma) {
    int cfg = args.config;
    if (cfg < 0) cfg = ChooseWgConfig(m, n, bs, dev);
    if (cfg >= 100 && cfg < 3200 && cfg % 100 >= kNumWgConfigs) {  // DIAGNOSTIC variants (benchmarks only)
      p.wg_diag = cfg / 100;
      cfg %= 100;
    }
    switch (cfg) {
      case 0: return LaunchWg<Wg0>(p, a_vec, dev, stream, pdl, err, len);
      case 1: return LaunchWg<Wg1>(p, a_vec, dev, stream, pdl, err, len);
      case 2: return LaunchWg<Wg2>(p, a_vec, dev, stream, pdl, err, len);
      case 3: return LaunchWg<Wg3>(p, a_vec, dev, stream, pdl, err, len);
      case 4: return LaunchWg<Wg4>(p, a_vec, dev, stream, pdl, err, len);
      case 5: return LaunchWg<Wg5>(p, a_vec, dev, stream, pdl, err, len);
      case 6: return LaunchWg<Wg6>(p, a_vec, dev, stream, pdl, err, len);
      case 7: return LaunchWg<Wg7>(p, a_vec, dev, stream, pdl, err, len);
      case 8: return LaunchWg<Wg8>(p, a_vec, dev, stream, pdl, err, len);
      case 9: return LaunchWg<Wg9>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 0: return LaunchWs<Ws0>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 1: return LaunchWs<Ws1>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 2: return LaunchWs<Ws2>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 3: return LaunchWs<Ws3>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 4: return LaunchWs<Ws4>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 5: return LaunchWs<Ws5>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 6: return LaunchWs<Ws6>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 7: return LaunchWs<Ws7>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 8: return LaunchWs<Ws8>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 9: return LaunchWs<Ws9>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 10: return LaunchWs<Ws10>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 11: return LaunchWs<Ws11>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 12: return LaunchWs<Ws12>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 13: return LaunchWs<Ws13>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 14: return LaunchWs<Ws14>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 15: return LaunchWs<Ws15>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 16: return LaunchWs<Ws16>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 17: return LaunchWs<Ws17>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 18: return LaunchWs<Ws18>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 19: return LaunchWs<Ws19>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 20: return LaunchWs<Ws20>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 21: return LaunchWs<Ws21>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 22: return LaunchWs<Ws22>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 23: return LaunchWs<Ws23>(p, a_vec, dev, stream, pdl, err, len);
      case kNumWgConfigs + 24: return LaunchWs<Ws24>(p, a_vec, dev, stream, pdl, err, len);
      default:
        return Fail(err, len, kInvalidArgument, "unknown wgmma config %d (0..%d)", cfg,
                    kNumWgConfigs + kNumWsConfigs - 1);
    }
  }
  if (path != Path::kTensorCore)
    return Fail(err, len, kInvalidArgument, "float16 A runs on the skinny, tensor-core or wgmma path");
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
