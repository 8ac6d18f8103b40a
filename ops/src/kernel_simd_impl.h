// SIMD kernels of MatMulBlockInt4, written once over a vector wrapper `V` (V256: AVX2,
// V512: AVX-512) and `kVnni`. Each x86 kernel file defines the ISA and includes this file
// once, e.g. kernel_vnni.cc:
//
//   #define ONNXQ_ISA vnni                       // namespace vnni_impl, kernels_vnni()
//   #define ONNXQ_ISA_TARGET "avx2,...,avx512vnni"  // target of every function here
//   #define ONNXQ_ISA_SIMD "simd_v512.h"         // the vector wrapper ...
//   #define ONNXQ_ISA_VECTOR V512                // ... and its type
//   #define ONNXQ_ISA_VNNI true                  // vpdpbusd (else vpmaddubsw)
//   #include "kernel_simd_impl.h"
//
// The functions run only after kernel_dispatch.cc has checked CPUID. Standard headers come
// before the target pragma so nothing from them is compiled for the ISA; no standard-library
// templates are used below it.
//
// Notation: L = lanes per vector; a "group" is 8 consecutive k (one dword = 8 nibbles of a
// column); a "chunk" is L groups (L*8 k, L*4 bytes of a column).
//
// Exact path (accuracy_level 0):
//   y[m,n] = sum_chunks sum_lanes s(n, blk) * sum_j code * a  -  sum_blk zp*s(n,blk) * asum(m,blk)
// int8 path (accuracy_level 4): A quantized per block (kernel.h), integer dot products:
//   y[m,n] = sum_blk sa(m,blk) s(n,blk) dot_i32  -  sum_blk zp*s(n,blk) * sa(m,blk) qsum(m,blk)
//
// Small M (GEMV): columns are streamed once; each 64-byte (AVX-512) load of a column is
// expanded in registers and multiplied with MR rows of A pre-permuted to the nibble order.
// Large M (GEMM): a tile of NT columns x KT k is expanded once into a panel (floats in L1;
// int8 path: the packed codes transposed to VNNI order, in L2) and reused across all rows
// of A by a register-blocked micro-kernel.
#if !defined(ONNXQ_ISA) || !defined(ONNXQ_ISA_TARGET) || !defined(ONNXQ_ISA_SIMD) || !defined(ONNXQ_ISA_VECTOR) || \
    !defined(ONNXQ_ISA_VNNI)
#error "define ONNXQ_ISA, ONNXQ_ISA_TARGET, ONNXQ_ISA_SIMD, ONNXQ_ISA_VECTOR and ONNXQ_ISA_VNNI first"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernel.h"

#define ONNXQ_CAT2(a, b) a##b
#define ONNXQ_CAT(a, b) ONNXQ_CAT2(a, b)
#define ONNXQ_STR2(a) #a
#define ONNXQ_STR(a) ONNXQ_STR2(a)
#define ONNXQ_PRAGMA(x) _Pragma(#x)
#define ONNXQ_TARGET_PUSH(t) ONNXQ_PRAGMA(GCC target(t))
#define ONNXQ_CLANG_TARGET_PUSH(t) ONNXQ_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define ONNXQ_ISA_NS ONNXQ_CAT(ONNXQ_ISA, _impl)

#if defined(__clang__)
ONNXQ_CLANG_TARGET_PUSH(ONNXQ_ISA_TARGET)
#else
#pragma GCC push_options
ONNXQ_TARGET_PUSH(ONNXQ_ISA_TARGET)
#endif

namespace onnxq {
namespace ops {
namespace ONNXQ_ISA_NS {
constexpr bool kVnni = ONNXQ_ISA_VNNI;
#include ONNXQ_ISA_SIMD
using V = ONNXQ_ISA_VECTOR;

static_assert(V::L == 8 || V::L == 16, "8 or 16 lanes");

constexpr int L = V::L;
constexpr int kChunkK = L * 8;      // k per chunk
constexpr int kChunkBytes = L * 4;  // bytes of a column per chunk
constexpr int NV = 2;               // vectors of columns per GEMM panel (fp32)
constexpr int NT = NV * L;          // columns per GEMM panel (fp32)
constexpr int NVI = 2;              // vectors of columns per GEMM panel (int8); 2 x 7 rows measured best
constexpr int NTI = NVI * L;        // columns per GEMM panel (int8)
// k per panel (int8): NTI*KT/2 bytes (up to 256 KiB, in L2). Usually all of K in one panel:
// fewer round trips of Y and micro-kernel calls (K = 11008 measured 2 % faster than 4096).
constexpr int kKtInt8 = 16384;
constexpr int kKtF32 = 256;         // k per panel (fp32): NT*KT*4 bytes
constexpr int kPanelGroupBytes = NVI * kChunkBytes;  // int8 panel bytes per group of 8 k
constexpr int kMrInt8 = (L == 16) ? 7 : 2;  // rows per int8 tile (AVX-512: 7 x 2 vectors measured best)
constexpr int kMrF32 = (L == 16) ? 14 : 6;
constexpr int64_t kGemvColsPerTask = 64;
constexpr int64_t kQuantPrefetchK = 512;  // int8 A quantization: software prefetch distance (floats)
constexpr int kPrefetchBytes = 8192;  // GEMV: software prefetch distance of the streamed column

inline int ilog2(int64_t x) {
  int r = 0;
  while ((int64_t{1} << (r + 1)) <= x) ++r;
  return r;
}
// Row stride (elements) of the prepared A rows: off multiples of 4 KiB so that the rows of
// a micro-kernel tile do not compete for the same L1 sets.
inline int64_t row_stride(int64_t kp) { return kp % 1024 == 0 ? kp + 64 : round_up(kp, 64); }
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

// ---- per-block values expanded to the lanes of chunk c -------------------------------
// Lane i of chunk c covers k in [c*kChunkK + 8i, +8): block (c*kChunkK + 8i) / bs.
struct LaneExpand {
  int64_t bs;
  int chunk_to_block_shift;  // bs >= kChunkK: block of chunk c = c >> shift
  int64_t blocks_per_chunk;  // 0 when a chunk lies inside one block (bs >= kChunkK)
  typename V::I idx;         // lane -> block within the chunk
  explicit LaneExpand(int64_t block_size) : bs(block_size) {
    chunk_to_block_shift = bs >= kChunkK ? ilog2(bs / kChunkK) : 0;
    if (bs >= kChunkK) {
      blocks_per_chunk = 0;
      idx = V::zeroi();
    } else {
      blocks_per_chunk = kChunkK / bs;
      idx = V::lane_shift_idx(ilog2(bs / 8));
    }
  }
  // values: per-block array with n_valid readable entries.
  typename V::F operator()(const float* values, int64_t n_valid, int64_t c) const {
    if (blocks_per_chunk == 0) return V::set1(values[c >> chunk_to_block_shift]);
    const int64_t b0 = c * blocks_per_chunk;
    const int64_t cnt = imin(blocks_per_chunk, n_valid - b0);
    return V::permute(V::load_n(values + b0, static_cast<int>(cnt)), idx);
  }
};

// Zero points of blocks [b0, b0 + cnt) of column n as floats (cnt <= L; lanes >= cnt are
// arbitrary finite values, callers multiply them by zero scales).
inline typename V::F zero_points(const Weights& w, int64_t n, int64_t b0, int cnt) {
  if (w.zp_packed) {
    uint64_t bytes = 0;
    std::memcpy(&bytes, w.zp_packed + n * w.zp_bytes + b0 / 2, static_cast<size_t>((cnt + 1) / 2));
    return V::nibbles_to_f(bytes);
  }
  if (w.zp_float) return V::load_n(w.zp_float + n * w.n_blocks + b0, cnt);
  return V::set1(8.0f);
}

// ---- A preparation ------------------------------------------------------------------
// int8 quantization of one row into linear order q[0..kp) (zero padded); the block scales
// and scale * sum(q) go to sa[b * bstride], rb[b * bstride] for b < nbp.
inline void quantize_row(const float* a, int64_t K, int64_t bs, int64_t kp, int64_t nbp, int8_t* q, float* sa,
                         float* rb, int64_t bstride, int32_t* qz = nullptr) {
  const int64_t nb = ceil_div(K, bs);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * bs, len = imin(bs, K - k0);
    // A is often the previous layer's output, in L3 or DRAM: fetch ahead of the two passes
    const int64_t pf0 = k0 + kQuantPrefetchK, pf1 = imin(K, pf0 + bs);
    for (int64_t k = pf0; k < pf1; k += 16) _mm_prefetch(reinterpret_cast<const char*>(a + k), _MM_HINT_T0);
    typename V::F vmax = V::zero();
    for (int64_t k = 0; k < len; k += L) vmax = V::max(vmax, V::abs(V::load_n(a + k0 + k, static_cast<int>(imin(L, len - k)))));
    const float amax = V::reduce_max(vmax);
    const float inv = amax > 0.f ? kInt8AMax / amax : 0.f;
    const typename V::F vinv = V::set1(inv);
    typename V::I qs = V::zeroi();
    for (int64_t k = 0; k < len; k += L) {
      const int cnt = static_cast<int>(imin(L, len - k));
      const typename V::I qi = V::cvt_round(V::mul(V::load_n(a + k0 + k, cnt), vinv));
      qs = V::add_i32(qs, qi);
      V::store_i8(q + k0 + k, qi);  // writes L bytes; the buffer has kp + L of room
    }
    const float scale = amax / kInt8AMax;
    const int32_t qsum = V::reduce_add_i32(qs);
    sa[b * bstride] = scale;
    rb[b * bstride] = scale * static_cast<float>(qsum);
    if (qz) qz[b * bstride] = -8 * qsum;  // symmetric weights: the zero point in int32
  }
  for (int64_t k = K; k < kp; ++k) q[k] = 0;
  for (int64_t b = nb; b < nbp; ++b) {
    sa[b * bstride] = rb[b * bstride] = 0.f;
    if (qz) qz[b * bstride] = 0;
  }
}

// Linear q -> per group [q0 q2 q4 q6 | q1 q3 q5 q7] (the GEMM layout: even-k dword, odd-k dword).
inline void interleave_groups(int8_t* q, int64_t kp) {
  for (int64_t k = 0; k < kp; k += 16) V::shuffle_groups16(q + k);
}

// GEMM layout -> GEMV layout: per chunk, the L even-k dwords then the L odd-k dwords.
inline void groups_to_chunks(const int8_t* src, int8_t* dst, int64_t kp) {
  for (int64_t c = 0; c < kp / kChunkK; ++c) {
    const int8_t* s = src + c * kChunkK;
    int8_t* d = dst + c * kChunkK;
    for (int i = 0; i < L; ++i) {
      std::memcpy(d + 4 * i, s + 8 * i, 4);
      std::memcpy(d + 4 * (L + i), s + 8 * i + 4, 4);
    }
  }
}

// fp GEMV: ap[c*kChunkK + j*L + i] = a[c*kChunkK + 8i + j] (zero padded), rb = block sums.
inline void permute_row_f32(const float* a, int64_t K, int64_t bs, int64_t kp, int64_t nbp, float* ap, float* rb) {
  for (int64_t c = 0; c < kp / kChunkK; ++c) {
    const int64_t base = c * kChunkK;
    for (int j = 0; j < 8; ++j)
      for (int i = 0; i < L; ++i) {
        const int64_t k = base + 8 * i + j;
        ap[base + j * L + i] = k < K ? a[k] : 0.f;
      }
  }
  const int64_t nb = ceil_div(K, bs);
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * bs, len = imin(bs, K - k0);
    typename V::F s = V::zero();
    for (int64_t k = 0; k < len; k += L) s = V::add(s, V::load_n(a + k0 + k, static_cast<int>(imin(L, len - k))));
    rb[b] = V::reduce_add(s);
  }
  for (int64_t b = nb; b < nbp; ++b) rb[b] = 0.f;
}

// ---- GEMV ---------------------------------------------------------------------------
struct GemvCtx {
  const Weights* w;
  const Problem* p;
  const float* ap;   // fp: [M][kp]
  const int8_t* q;   // int8: [M][kp]
  const float* sa;   // int8: [M][nbp]
  const float* rb;   // [M][nbp]
  int64_t kp, ld, nbp, n_chunks, full_chunks;
  LaneExpand expand;
};

// One chunk of one column against MR rows: returns nothing, accumulates into tot[m].
template <int MR, bool INT8>
inline void gemv_chunk(const GemvCtx& g, int64_t m0, int64_t c, typename V::I x, typename V::F s,
                       typename V::F tot[MR]) {
  using F = typename V::F;
  using I = typename V::I;
  if constexpr (!INT8) {
    F acc[MR][4];
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < 4; ++j) acc[m][j] = V::zero();
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const F cf = V::nib_f(V::srl32(x, 4 * j));
      for (int m = 0; m < MR; ++m) {
        const float* a = g.ap + (m0 + m) * g.ld + c * kChunkK + j * L;
        acc[m][j & 3] = V::fma(V::load(a), cf, acc[m][j & 3]);
      }
    }
    for (int m = 0; m < MR; ++m)
      tot[m] = V::fma(V::add(V::add(acc[m][0], acc[m][1]), V::add(acc[m][2], acc[m][3])), s, tot[m]);
  } else {
    const I mask = V::set1_i32(0x0F0F0F0F);
    const I lo = V::and_i(x, mask), hi = V::and_i(V::srl32(x, 4), mask);
    for (int m = 0; m < MR; ++m) {
      const int8_t* qa = g.q + (m0 + m) * g.ld + c * kChunkK;
      const I d = V::dot2(V::zeroi(), lo, V::load_i(qa), hi, V::load_i(qa + kChunkBytes));
      tot[m] = V::fma(V::cvt(d), V::mul(s, g.expand(g.sa + (m0 + m) * g.nbp, g.nbp, c)), tot[m]);
    }
  }
}

// Column n against rows [m0, m0 + MR): streams the column once, two chunks per step.
template <int MR, bool INT8>
void gemv_tile(const GemvCtx& g, int64_t m0, int64_t n) {
  const Weights& w = *g.w;
  using F = typename V::F;
  using I = typename V::I;
  F tot0[MR], tot1[MR];
  for (int m = 0; m < MR; ++m) tot0[m] = tot1[m] = V::zero();
  const uint8_t* col = w.packed + n * w.row_bytes;
  const float* sc = w.scales + n * w.n_blocks;
  int64_t c = 0;
  for (; c + 2 <= g.full_chunks; c += 2) {
    for (int64_t off = 0; off < 2 * kChunkBytes; off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(col + c * kChunkBytes + kPrefetchBytes + off), _MM_HINT_T0);
    const I x0 = V::load_i(col + c * kChunkBytes), x1 = V::load_i(col + (c + 1) * kChunkBytes);
    gemv_chunk<MR, INT8>(g, m0, c, x0, g.expand(sc, w.n_blocks, c), tot0);
    gemv_chunk<MR, INT8>(g, m0, c + 1, x1, g.expand(sc, w.n_blocks, c + 1), tot1);
  }
  for (; c < g.n_chunks; ++c) {
    const I x = c < g.full_chunks ? V::load_i(col + c * kChunkBytes)
                                  : V::load_i_n(col + c * kChunkBytes, static_cast<int>(w.row_bytes - c * kChunkBytes));
    gemv_chunk<MR, INT8>(g, m0, c, x, g.expand(sc, w.n_blocks, c), tot0);
  }
  // zero-point correction: - sum_blk zp*s * rb[m][blk]
  for (int64_t b0 = 0; b0 < w.n_blocks; b0 += L) {
    const int cnt = static_cast<int>(imin(L, w.n_blocks - b0));
    const F zs = V::mul(V::load_n(sc + b0, cnt), zero_points(w, n, b0, cnt));
    for (int m = 0; m < MR; ++m) tot1[m] = V::fnma(zs, V::load(g.rb + (m0 + m) * g.nbp + b0), tot1[m]);
  }
  const Problem& p = *g.p;
  for (int m = 0; m < MR; ++m) p.Y[(m0 + m) * p.ldy + n] = V::reduce_add(V::add(tot0[m], tot1[m]));
}

template <bool INT8>
void gemv_task(void* ctx, size_t t) {
  const GemvCtx& g = *static_cast<const GemvCtx*>(ctx);
  const int64_t n_begin = static_cast<int64_t>(t) * kGemvColsPerTask;
  const int64_t n_end = imin(g.w->N, n_begin + kGemvColsPerTask);
  const int64_t M = g.p->M;
  for (int64_t n = n_begin; n < n_end; ++n) {
    int64_t m0 = 0;
    for (; m0 + 4 <= M; m0 += 4) gemv_tile<4, INT8>(g, m0, n);
    switch (M - m0) {
      case 3: gemv_tile<3, INT8>(g, m0, n); break;
      case 2: gemv_tile<2, INT8>(g, m0, n); break;
      case 1: gemv_tile<1, INT8>(g, m0, n); break;
      default: break;
    }
  }
}

struct RowPrepCtx {
  const Weights* w;
  const Problem* p;
  float* ap;
  int8_t* q;
  int8_t* q_tmp;  // int8: per-row scratch of kp + 64 bytes, one per row
  int32_t* qz;    // GEMM int8, symmetric weights: -8 * sum(q) per block, [nbp][M]; or null
  float* sa;
  float* rb;
  int64_t kp, ld, nbp;
  bool gemv;
};

// The row tiles of the int8 GEMM: ceil(M / kMrInt8) tiles of at most kMrInt8 rows, balanced
// (no tile of one or two rows at the end): the first M % tiles tiles have base + 1 rows,
// the others base. Row m lies in the tile [*m0, *m0 + *rows). The prepared A of a tile is
// stored group-interleaved, q[m0 * kp + (gi * rows + r) * 8 + j] (gi = k / 8, r = row in
// the tile): the micro-kernel reads one sequential stream instead of one per row.
inline void gemm_row_tile(int64_t M, int64_t m, int64_t* m0, int64_t* rows) {
  const int64_t tiles = ceil_div(M, kMrInt8);
  const int64_t base = M / tiles, extra = M % tiles;
  if (m < extra * (base + 1)) {
    *rows = base + 1;
    *m0 = m / (base + 1) * (base + 1);
  } else {
    *rows = base;
    *m0 = m - (m - extra * (base + 1)) % base;
  }
}

void prep_rows_task(void* ctx, size_t t) {
  const RowPrepCtx& r = *static_cast<const RowPrepCtx*>(ctx);
  const Problem& p = *r.p;
  const int64_t m = static_cast<int64_t>(t);
  const float* a = p.A + m * p.lda;
  const int64_t K = r.w->K, bs = r.w->block_size;
  if (!p.int8_a) {
    if (r.gemv) {
      permute_row_f32(a, K, bs, r.kp, r.nbp, r.ap + m * r.ld, r.rb + m * r.nbp);
    } else {
      float* dst = r.ap + m * r.ld;
      std::memcpy(dst, a, sizeof(float) * static_cast<size_t>(K));
      for (int64_t k = K; k < r.kp; ++k) dst[k] = 0.f;
    }
    return;
  }
  int8_t* lin = r.q_tmp + m * (r.kp + 64);
  if (r.gemv)
    quantize_row(a, K, bs, r.kp, r.nbp, lin, r.sa + m * r.nbp, r.rb + m * r.nbp, 1);
  else  // GEMM: block-major [nbp][M], the rows of a tile side by side
    quantize_row(a, K, bs, r.kp, r.nbp, lin, r.sa + m, r.rb + m, p.M, r.qz ? r.qz + m : nullptr);
  interleave_groups(lin, r.kp);
  if (r.gemv) {
    groups_to_chunks(lin, r.q + m * r.ld, r.kp);
  } else {  // GEMM: row tiles interleaved by group (see gemm_row_tile)
    int64_t m0 = 0, rows = 0;
    gemm_row_tile(p.M, m, &m0, &rows);
    int8_t* d = r.q + m0 * r.kp + (m - m0) * 8;
    for (int64_t k = 0; k < r.kp; k += 8, d += rows * 8) std::memcpy(d, lin + k, 8);
  }
}

// Sizes and scratch buffers of the prepared rows of A (both paths; see RowPrepCtx).
struct PreparedA {
  int64_t kp, nbp, ld;
  Scratch ap, q, sa, rb;
  PreparedA(const Weights& w, const Problem& p)
      : kp(round_up(w.n_blocks * w.block_size, kChunkK)),
        nbp(round_up(ceil_div(kp, w.block_size), L) + L),
        ld(row_stride(kp)),
        ap(0, p.int8_a ? 64 : sizeof(float) * static_cast<size_t>(p.M * ld)),
        q(1, p.int8_a ? static_cast<size_t>(p.M * ld + 64) : 64),
        sa(3, sizeof(float) * static_cast<size_t>(p.M * nbp)),
        rb(4, sizeof(float) * static_cast<size_t>(p.M * nbp)) {}
  bool ok() const { return ap.p && q.p && sa.p && rb.p; }
};

int gemv(const Weights& w, const Problem& p, const Runner& runner) {
  PreparedA a(w, p);
  const int64_t kp = a.kp, nbp = a.nbp, ld = a.ld;
  Scratch q_tmp(2, p.int8_a ? static_cast<size_t>(p.M * (kp + 64)) : 64);
  if (!a.ok() || !q_tmp.p) return kOutOfMemory;
  RowPrepCtx r{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), q_tmp.as<int8_t>(), nullptr, a.sa.as<float>(), a.rb.as<float>(), kp, ld, nbp, true};
  runner.run(static_cast<size_t>(p.M), prep_rows_task, &r);

  GemvCtx g{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), a.sa.as<float>(), a.rb.as<float>(), kp, ld, nbp,
            kp / kChunkK, w.row_bytes / kChunkBytes, LaneExpand(w.block_size)};
  const size_t tasks = static_cast<size_t>(ceil_div(w.N, kGemvColsPerTask));
  runner.run(tasks, p.int8_a ? gemv_task<true> : gemv_task<false>, &g);
  return kOk;
}

// ---- GEMM ---------------------------------------------------------------------------
struct GemmCtx {
  const Weights* w;
  const Problem* p;
  const float* ap;  // fp: [M][kp] zero padded
  const int8_t* q;  // int8: [M][kp] GEMM layout
  const float* sa;  // int8: [nbp][M]
  const float* rb;  // int8: [nbp][M]
  const int32_t* qz;  // int8, symmetric weights: [nbp][M] (see RowPrepCtx)
  int64_t kp, ld, nbp;
  int* failed;  // set when a task cannot allocate its panel
};

// Scales of one column panel of NVX * L columns, transposed: sT[b][NVX * L] = s(n0 + j, b),
// zsT = zp * s (only if need_zs), for blocks [0, nblk) (zero outside the weight).
// Vectorized: L columns x L blocks at a time.
template <int NVX>
inline void tile_scales(const Weights& w, int64_t n0, int64_t nblk, float* sT, float* zsT, bool need_zs) {
  using I = typename V::I;
  using F = typename V::F;
  constexpr int NTX = NVX * L;
  for (int v = 0; v < NVX; ++v) {
    for (int64_t b0 = 0; b0 < nblk; b0 += L) {
      const int cnt = static_cast<int>(imax(0, imin(L, w.n_blocks - b0)));
      I rs[L], rz[L];
      for (int i = 0; i < L; ++i) {
        const int64_t n = n0 + v * L + i;
        if (n < w.N && cnt > 0) {
          const F sv = V::load_n(w.scales + n * w.n_blocks + b0, cnt);
          rs[i] = V::castf2i(sv);
          rz[i] = need_zs ? V::castf2i(V::mul(sv, zero_points(w, n, b0, cnt))) : V::zeroi();
        } else {
          rs[i] = rz[i] = V::zeroi();
        }
      }
      V::transpose(rs);
      if (need_zs) V::transpose(rz);
      for (int j = 0; j < L && b0 + j < nblk; ++j) {
        V::store(sT + (b0 + j) * NTX + v * L, V::casti2f(rs[j]));
        if (need_zs) V::store(zsT + (b0 + j) * NTX + v * L, V::casti2f(rz[j]));
      }
    }
  }
}

// Loads chunk c of L columns [n0, n0 + L) and transposes: r[j] = dword j of each column.
// With pf_delta != 0 each full load also prefetches the line `pf_delta` bytes further (what
// the next panel build will load: the panel loads jump between columns, which hardware
// prefetchers follow poorly, and B is read once, from DRAM). The int8 path prefetches with
// a PanelPrefetch instead, spread over the micro-kernel calls.
inline void load_transposed(const Weights& w, int64_t n0, int64_t c, int64_t pf_delta, typename V::I r[L]) {
  const int64_t off = c * kChunkBytes;
  const int64_t avail = w.row_bytes - off;
  const uint8_t* src = w.packed + n0 * w.row_bytes + off;
  if (n0 + L <= w.N && avail >= kChunkBytes) {  // the common case
    for (int i = 0; i < L; ++i) {
      if (pf_delta != 0) _mm_prefetch(reinterpret_cast<const char*>(src + i * w.row_bytes + pf_delta), _MM_HINT_T0);
      r[i] = V::load_i(src + i * w.row_bytes);
    }
  } else {
    for (int i = 0; i < L; ++i) {
      if (n0 + i >= w.N)
        r[i] = V::zeroi();
      else if (avail >= kChunkBytes)
        r[i] = V::load_i(src + i * w.row_bytes);
      else
        r[i] = V::load_i_n(src + i * w.row_bytes, static_cast<int>(avail));
    }
  }
  V::transpose(r);
}

// Byte distance from the panel (n0, [kt0, kt1)) to the next one this task builds: the next
// k-tile of the same columns, else the first k-tile of the next columns.
inline int64_t next_panel_delta(const Weights& w, int64_t kt0, int64_t kt1, int64_t kp) {
  return kt1 < kp ? (kt1 - kt0) / 2 : NT * w.row_bytes - kt0 / 2;
}

// Software prefetch of what the next panel build reads (the packed codes of its columns and,
// when it starts new columns, their scales), spread evenly over the micro-kernel calls of
// the current panel: issued in one burst at build time the lines arrive too late (the build
// stalls on DRAM) and fill the miss buffers; spread out they are in cache when needed.
struct PanelPrefetch {
  struct Region {
    const uint8_t* base = nullptr;
    int64_t stride = 0, cols = 0, lines = 0;  // `lines` 64-byte lines from each column start
  };
  Region r[2];
  int nreg = 0, reg = 0;
  int64_t col = 0, line = 0;
  int per_step = 0;
  void add(const void* base, int64_t stride, int64_t cols, int64_t bytes) {
    if (cols <= 0 || bytes <= 0) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(base);
    r[nreg++] = Region{static_cast<const uint8_t*>(base), stride, cols, static_cast<int64_t>(((a & 63) + bytes + 63) / 64)};
  }
  int64_t total() const {
    int64_t t = 0;
    for (int i = 0; i < nreg; ++i) t += r[i].cols * r[i].lines;
    return t;
  }
  void set_steps(int64_t steps) { per_step = static_cast<int>(steps > 0 ? ceil_div(total(), steps) : total()); }
  void step() {
    for (int i = 0; i < per_step && reg < nreg; ++i) {
      const Region& g = r[reg];
      _mm_prefetch(reinterpret_cast<const char*>(g.base + col * g.stride + line * 64), _MM_HINT_T0);
      if (++line == g.lines) {
        line = 0;
        if (++col == g.cols) {
          col = 0;
          ++reg;
        }
      }
    }
  }
};

// The PanelPrefetch for the int8 panel after the one ending at kt1 (panels of kt k): the next
// k panel of columns n0, else the first k panel of the next columns (the next task's).
inline PanelPrefetch next_panel_prefetch(const Weights& w, int64_t n0, int64_t kt1, int64_t kt, int64_t kp) {
  PanelPrefetch pf;
  const int64_t n1 = kt1 < kp ? n0 : n0 + NTI;
  const int64_t k0 = kt1 < kp ? kt1 : 0;
  const int64_t k1 = imin(kp, k0 + kt);
  const int64_t cols = imin(NTI, w.N - n1);
  const int64_t b0 = k0 / 2, b1 = imin(w.row_bytes, k1 / 2);
  if (cols > 0 && b1 > b0) pf.add(w.packed + n1 * w.row_bytes + b0, w.row_bytes, cols, b1 - b0);
  if (cols > 0 && kt1 >= kp) pf.add(w.scales + n1 * w.n_blocks, w.n_blocks * 4, cols, w.n_blocks * 4);
  return pf;
}

// int8 panel: for group gl (k = kt0 + 8 gl ..): [gl][v] vectors of L packed dwords (8
// codes of a column each). The micro-kernel splits the nibbles: its vpand/vpsrld run beside
// vpdpbusd at no cost (Zen 5), and the panel is half the size of u8 codes.
inline void build_panel_int8(const Weights& w, int64_t n0, int64_t kt0, int64_t kt1, uint8_t* panel) {
  using I = typename V::I;
  for (int v = 0; v < NVI; ++v) {
    for (int64_t c = kt0 / kChunkK; c < kt1 / kChunkK; ++c) {
      I r[L];
      load_transposed(w, n0 + v * L, c, 0, r);  // prefetched by a PanelPrefetch
      const int64_t g0 = c * L - kt0 / 8;
      for (int j = 0; j < L; ++j) V::store_i(panel + ((g0 + j) * NVI + v) * kChunkBytes, r[j]);
    }
  }
}

// fp panel: panel[kl][NT] = dequantized weights (code * s - zp * s), kl = k - kt0.
inline void build_panel_f32(const Weights& w, int64_t n0, int64_t kt0, int64_t kt1, int64_t pf_delta, const float* sT,
                            const float* zsT, float* panel) {
  using F = typename V::F;
  using I = typename V::I;
  const int64_t bs = w.block_size, b_first = kt0 / bs;
  for (int v = 0; v < NV; ++v) {
    for (int64_t c = kt0 / kChunkK; c < kt1 / kChunkK; ++c) {
      I r[L];
      load_transposed(w, n0 + v * L, c, pf_delta, r);
      for (int j = 0; j < L; ++j) {
        const int64_t k = (c * L + j) * 8;
        const int64_t bi = k / bs - b_first;
        const F s = V::load(sT + bi * NT + v * L), zs = V::load(zsT + bi * NT + v * L);
        float* dst = panel + (k - kt0) * NT + v * L;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) V::store(dst + t * NT, V::fms(V::nib_f(V::srl32(r[j], 4 * t)), s, zs));
      }
    }
  }
}

template <int MR>
void micro_f32(const GemmCtx& g, int64_t m0, int64_t n0, int64_t kt0, int64_t kt1, const float* panel) {
  using F = typename V::F;
  const Problem& p = *g.p;
  const int64_t ncols = imin(NT, g.w->N - n0);
  F c[MR][NV];
  if (kt0 == 0) {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) c[m][v] = V::zero();
  } else {
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v)
        c[m][v] = V::load_n(p.Y + (m0 + m) * p.ldy + n0 + v * L, static_cast<int>(imax(0, imin(L, ncols - v * L))));
  }
  const float* a = g.ap + m0 * g.ld;
  for (int64_t k = kt0; k < kt1; ++k) {
    const float* pk = panel + (k - kt0) * NT;
    const F b0 = V::load(pk), b1 = V::load(pk + L);
    for (int m = 0; m < MR; ++m) {
      const F am = V::set1(a[m * g.ld + k]);
      c[m][0] = V::fma(am, b0, c[m][0]);
      c[m][1] = V::fma(am, b1, c[m][1]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      V::store_n(p.Y + (m0 + m) * p.ldy + n0 + v * L, c[m][v], static_cast<int>(imax(0, imin(L, ncols - v * L))));
}

// int8 micro-kernel: MR rows x NTI columns. The int32 block sums stay in registers (MR * NVI
// of them); the float accumulators live in a small L1-resident buffer that the per-block
// epilogue loads, updates and stores (measured as fast as float accumulators in registers).
// A comes group-interleaved (gemm_row_tile): one sequential stream for all rows of the tile.
template <int MR, bool SYM>
void micro_int8(const GemmCtx& g, int64_t m0, int64_t n0, int64_t kt0, int64_t kt1, const uint8_t* panel,
                const float* sT, const float* zsT, PanelPrefetch* pf) {
  using F = typename V::F;
  using I = typename V::I;
  const Problem& p = *g.p;
  const int64_t bs = g.w->block_size;
  const int64_t ncols = imin(NTI, g.w->N - n0);
  alignas(64) float cbuf[MR][NTI];
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NVI; ++v)
      V::store(&cbuf[m][v * L], kt0 == 0 ? V::zero()
                                          : V::load_n(p.Y + (m0 + m) * p.ldy + n0 + v * L,
                                                      static_cast<int>(imax(0, imin(L, ncols - v * L)))));
  const I mask = V::set1_i32(0x0F0F0F0F);
  const int8_t* qa = g.q + m0 * g.kp;  // group-interleaved rows (gemm_row_tile)
  const int64_t b_first = kt0 / bs;
  for (int64_t b = b_first; b * bs < kt1; ++b) {
    const int64_t g_begin = imax(b * bs, kt0) / 8, g_end = imin((b + 1) * bs, kt1) / 8;
    const int32_t* qzb = SYM ? g.qz + b * p.M + m0 : nullptr;  // int32 zero-point term
    I acc[MR][NVI];
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NVI; ++v) acc[m][v] = SYM ? V::set1_i32(qzb[m]) : V::zeroi();
    const uint8_t* pp = panel + (g_begin - kt0 / 8) * kPanelGroupBytes;
    const int8_t* qg = qa + g_begin * MR * 8;
#pragma GCC unroll 1
    for (int64_t gi = g_begin; gi < g_end; ++gi, pp += kPanelGroupBytes, qg += MR * 8) {
      I u[NVI];
      for (int v = 0; v < NVI; ++v) u[v] = V::and_i(V::load_i(pp + v * kChunkBytes), mask);
      for (int m = 0; m < MR; ++m) {
        const I alo = V::bcast32(qg + m * 8);
        for (int v = 0; v < NVI; ++v) acc[m][v] = V::dot(acc[m][v], u[v], alo);
      }
      for (int v = 0; v < NVI; ++v) u[v] = V::and_i(V::srl32(V::load_i(pp + v * kChunkBytes), 4), mask);
      for (int m = 0; m < MR; ++m) {
        const I ahi = V::bcast32(qg + m * 8 + 4);
        for (int v = 0; v < NVI; ++v) acc[m][v] = V::dot(acc[m][v], u[v], ahi);
      }
    }
    pf->step();
    const int64_t bi = b - b_first;
    const float* sab = g.sa + b * p.M + m0;
    const float* rbb = g.rb + b * p.M + m0;
    for (int m = 0; m < MR; ++m) {
      const F sam = V::set1(sab[m]);
      for (int v = 0; v < NVI; ++v) {
        F c = V::fma(V::cvt(acc[m][v]), V::mul(V::load(sT + bi * NTI + v * L), sam), V::load(&cbuf[m][v * L]));
        if constexpr (!SYM) c = V::fnma(V::load(zsT + bi * NTI + v * L), V::set1(rbb[m]), c);
        V::store(&cbuf[m][v * L], c);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NVI; ++v)
      V::store_n(p.Y + (m0 + m) * p.ldy + n0 + v * L, V::load(&cbuf[m][v * L]),
                 static_cast<int>(imax(0, imin(L, ncols - v * L))));
}

template <int MR>
void micro_f32_rows(const GemmCtx& g, int64_t n0, int64_t kt0, int64_t kt1, const float* panel) {
  const int64_t M = g.p->M;
  int64_t m0 = 0;
  for (; m0 + MR <= M; m0 += MR) micro_f32<MR>(g, m0, n0, kt0, kt1, panel);
  switch (M - m0) {  // remainder rows, one call
#define ONNXQ_CASE(R) \
  case R:             \
    if constexpr (R < MR) micro_f32<R>(g, m0, n0, kt0, kt1, panel); \
    break;
    ONNXQ_CASE(1) ONNXQ_CASE(2) ONNXQ_CASE(3) ONNXQ_CASE(4) ONNXQ_CASE(5) ONNXQ_CASE(6) ONNXQ_CASE(7)
    ONNXQ_CASE(8) ONNXQ_CASE(9) ONNXQ_CASE(10) ONNXQ_CASE(11) ONNXQ_CASE(12) ONNXQ_CASE(13)
#undef ONNXQ_CASE
    default:
      break;
  }
}

// Rows in balanced tiles of at most MR (no tile of one or two rows at the end): the
// first M % tiles tiles have base + 1 rows, the others base. MR = kMrInt8: the partition
// of gemm_row_tile, which laid out the prepared A.
template <int MR, bool SYM>
void micro_int8_rows(const GemmCtx& g, int64_t n0, int64_t kt0, int64_t kt1, const uint8_t* panel, const float* sT,
                     const float* zsT, PanelPrefetch* pf) {
  const int64_t M = g.p->M;
  const int64_t tiles = ceil_div(M, MR);
  const int64_t bs = g.w->block_size;
  pf->set_steps(tiles * (ceil_div(kt1, bs) - kt0 / bs));
  const int64_t base = M / tiles, extra = M % tiles;
  int64_t m0 = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = t < extra ? base + 1 : base;
    switch (rows) {
#define ONNXQ_CASE(R) \
  case R:             \
    if constexpr (R <= MR) micro_int8<R, SYM>(g, m0, n0, kt0, kt1, panel, sT, zsT, pf); \
    break;
      ONNXQ_CASE(1) ONNXQ_CASE(2) ONNXQ_CASE(3) ONNXQ_CASE(4) ONNXQ_CASE(5) ONNXQ_CASE(6) ONNXQ_CASE(7)
      ONNXQ_CASE(8) ONNXQ_CASE(9) ONNXQ_CASE(10) ONNXQ_CASE(11) ONNXQ_CASE(12)
#undef ONNXQ_CASE
      default:
        break;
    }
    m0 += rows;
  }
}

template <bool INT8>
void gemm_task(void* ctx, size_t t) {
  const GemmCtx& g = *static_cast<const GemmCtx*>(ctx);
  const Weights& w = *g.w;
  constexpr int NTX = INT8 ? NTI : NT;
  const int64_t n0 = static_cast<int64_t>(t) * NTX;
  const int64_t bs = w.block_size;
  const int64_t kt = INT8 ? kKtInt8 : kKtF32;  // multiple of kChunkK and of every block size
  const int64_t nblk_all = ceil_div(g.kp, bs);
  Scratch panel(5, INT8 ? static_cast<size_t>(kt / 8 * kPanelGroupBytes) : sizeof(float) * static_cast<size_t>(kt * NT));
  Scratch scales(6, sizeof(float) * static_cast<size_t>(2 * round_up(nblk_all, L) * NTX));
  if (!panel.p || !scales.p) {
    __atomic_store_n(g.failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float* sT = scales.as<float>();
  float* zsT = sT + round_up(nblk_all, L) * NTX;
  tile_scales<INT8 ? NVI : NV>(w, n0, nblk_all, sT, zsT, !(INT8 && g.qz));  // symmetric int8: no zsT
  for (int64_t kt0 = 0; kt0 < g.kp; kt0 += kt) {
    const int64_t kt1 = imin(g.kp, kt0 + kt);
    const int64_t b_first = kt0 / bs;
    const int64_t pf_delta = next_panel_delta(w, kt0, kt1, g.kp);
    if constexpr (INT8) {
      build_panel_int8(w, n0, kt0, kt1, panel.as<uint8_t>());
      PanelPrefetch pf = next_panel_prefetch(w, n0, kt1, kt, g.kp);
      if (g.qz)
        micro_int8_rows<kMrInt8, true>(g, n0, kt0, kt1, panel.as<uint8_t>(), sT + b_first * NTI, zsT + b_first * NTI, &pf);
      else
        micro_int8_rows<kMrInt8, false>(g, n0, kt0, kt1, panel.as<uint8_t>(), sT + b_first * NTI, zsT + b_first * NTI, &pf);
    } else {
      build_panel_f32(w, n0, kt0, kt1, pf_delta, sT + b_first * NT, zsT + b_first * NT, panel.as<float>());
      micro_f32_rows<kMrF32>(g, n0, kt0, kt1, panel.as<float>());
    }
  }
}

int gemm(const Weights& w, const Problem& p, const Runner& runner) {
  PreparedA a(w, p);
  const int64_t kp = a.kp, nbp = a.nbp, ld = a.ld;
  const bool sym = p.int8_a && !w.zp_packed && !w.zp_float;
  Scratch qz(7, sym ? sizeof(int32_t) * static_cast<size_t>(p.M * nbp) : 64);
  Scratch q_tmp(2, p.int8_a ? static_cast<size_t>(p.M * (kp + 64)) : 64);
  if (!a.ok() || !qz.p || !q_tmp.p) return kOutOfMemory;
  int32_t* qzp = sym ? qz.as<int32_t>() : nullptr;
  RowPrepCtx r{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), q_tmp.as<int8_t>(), qzp, a.sa.as<float>(), a.rb.as<float>(), kp, ld, nbp, false};
  runner.run(static_cast<size_t>(p.M), prep_rows_task, &r);
  int failed = 0;
  GemmCtx g{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), a.sa.as<float>(), a.rb.as<float>(), qzp, kp, ld, nbp, &failed};
  runner.run(static_cast<size_t>(ceil_div(w.N, p.int8_a ? NTI : NT)), p.int8_a ? gemm_task<true> : gemm_task<false>, &g);
  return __atomic_load_n(&failed, __ATOMIC_RELAXED) ? kOutOfMemory : kOk;
}

// ---- entry --------------------------------------------------------------------------
// Below this many rows the streaming GEMV kernels win (measured on Zen 5, block 128).
inline int64_t gemm_min_rows(bool int8) { return int8 ? 5 : 4; }

int matmul(const Weights& w, const Problem& p, const Runner& runner) {
  if (p.M == 0 || w.N == 0) return kOk;
  bool use_gemm = p.M >= gemm_min_rows(p.int8_a);
  if (p.force_path == 1) use_gemm = false;
  if (p.force_path == 2) use_gemm = true;
  return use_gemm ? gemm(w, p, runner) : gemv(w, p, runner);
}

void half_to_float(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + L <= n; i += L) V::store(dst + i, V::load_half(src + i));
  for (; i < n; ++i) dst[i] = half_to_float_scalar(src[i]);
}

void float_to_half(const float* src, uint16_t* dst, size_t n) {
  size_t i = 0;
  for (; i + L <= n; i += L) V::store_half(dst + i, V::load(src + i));
  for (; i < n; ++i) dst[i] = float_to_half_scalar(src[i]);
}

}  // namespace ONNXQ_ISA_NS
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
const IsaKernels kTable = {ONNXQ_STR(ONNXQ_ISA), ONNXQ_ISA_NS::matmul, ONNXQ_ISA_NS::half_to_float,
                           ONNXQ_ISA_NS::float_to_half};
}
const IsaKernels* ONNXQ_CAT(kernels_, ONNXQ_ISA)() { return &kTable; }
}  // namespace ops
}  // namespace onnxq
