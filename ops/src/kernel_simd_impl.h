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
constexpr int NV = 2;               // vectors of columns per GEMM panel
constexpr int NT = NV * L;          // columns per GEMM panel
constexpr int kKtInt8 = 4096;       // k per panel (int8): NT*KT/2 bytes (64 KiB, in L2); few micro-kernel calls
constexpr int kKtF32 = 256;         // k per panel (fp32): NT*KT*4 bytes
constexpr int kMrInt8 = (L == 16) ? 7 : 2;
constexpr int kMrF32 = (L == 16) ? 14 : 6;
constexpr int64_t kGemvColsPerTask = 64;
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
  int8_t* q_tmp;  // GEMV int8: per-row scratch of kp + 64 bytes, one per task
  int32_t* qz;    // GEMM int8, symmetric weights: -8 * sum(q) per block, [nbp][M]; or null
  float* sa;
  float* rb;
  int64_t kp, ld, nbp;
  bool gemv;
};

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
  int8_t* dst = r.q + m * r.ld;
  int8_t* lin = r.gemv ? r.q_tmp + m * (r.kp + 64) : dst;
  if (r.gemv)
    quantize_row(a, K, bs, r.kp, r.nbp, lin, r.sa + m * r.nbp, r.rb + m * r.nbp, 1);
  else  // GEMM: block-major [nbp][M], the rows of a tile side by side
    quantize_row(a, K, bs, r.kp, r.nbp, lin, r.sa + m, r.rb + m, p.M, r.qz ? r.qz + m : nullptr);
  interleave_groups(lin, r.kp);
  if (r.gemv) groups_to_chunks(lin, dst, r.kp);
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

// Scales of one column panel, transposed: sT[b][NT] = s(n0 + j, b), zsT = zp * s, for
// blocks [0, nblk) (zero outside the weight). Vectorized: L columns x L blocks at a time.
inline void tile_scales(const Weights& w, int64_t n0, int64_t nblk, float* sT, float* zsT) {
  using I = typename V::I;
  using F = typename V::F;
  for (int v = 0; v < NV; ++v) {
    for (int64_t b0 = 0; b0 < nblk; b0 += L) {
      const int cnt = static_cast<int>(imax(0, imin(L, w.n_blocks - b0)));
      I rs[L], rz[L];
      for (int i = 0; i < L; ++i) {
        const int64_t n = n0 + v * L + i;
        if (n < w.N && cnt > 0) {
          const F sv = V::load_n(w.scales + n * w.n_blocks + b0, cnt);
          rs[i] = V::castf2i(sv);
          rz[i] = V::castf2i(V::mul(sv, zero_points(w, n, b0, cnt)));
        } else {
          rs[i] = rz[i] = V::zeroi();
        }
      }
      V::transpose(rs);
      V::transpose(rz);
      for (int j = 0; j < L && b0 + j < nblk; ++j) {
        V::store(sT + (b0 + j) * NT + v * L, V::casti2f(rs[j]));
        V::store(zsT + (b0 + j) * NT + v * L, V::casti2f(rz[j]));
      }
    }
  }
}

// Loads chunk c of L columns [n0, n0 + L) and transposes: r[j] = dword j of each column.
// Each full load also prefetches the line `pf_delta` bytes further (what the next panel
// build will load: the panel loads jump between columns, which hardware prefetchers follow
// poorly, and B is read once, from DRAM).
inline void load_transposed(const Weights& w, int64_t n0, int64_t c, int64_t pf_delta, typename V::I r[L]) {
  const int64_t off = c * kChunkBytes;
  const int64_t avail = w.row_bytes - off;
  const uint8_t* src = w.packed + n0 * w.row_bytes + off;
  if (n0 + L <= w.N && avail >= kChunkBytes) {  // the common case
    for (int i = 0; i < L; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(src + i * w.row_bytes + pf_delta), _MM_HINT_T0);
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

// int8 panel: for group gl (k = kt0 + 8 gl ..): [gl][v] vectors of L packed dwords (8
// codes of a column each). The micro-kernel splits the nibbles: its vpand/vpsrld run beside
// vpdpbusd at no cost (Zen 5), and the panel is half the size of u8 codes.
inline void build_panel_int8(const Weights& w, int64_t n0, int64_t kt0, int64_t kt1, int64_t pf_delta, uint8_t* panel) {
  using I = typename V::I;
  for (int v = 0; v < NV; ++v) {
    for (int64_t c = kt0 / kChunkK; c < kt1 / kChunkK; ++c) {
      I r[L];
      load_transposed(w, n0 + v * L, c, pf_delta, r);
      const int64_t g0 = c * L - kt0 / 8;
      for (int j = 0; j < L; ++j) V::store_i(panel + ((g0 + j) * NV + v) * kChunkBytes, r[j]);
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

template <int MR, bool SYM>
void micro_int8(const GemmCtx& g, int64_t m0, int64_t n0, int64_t kt0, int64_t kt1, const uint8_t* panel,
                const float* sT, const float* zsT) {
  using F = typename V::F;
  using I = typename V::I;
  const Problem& p = *g.p;
  const int64_t bs = g.w->block_size;
  const int64_t ncols = imin(NT, g.w->N - n0);
  F c[MR][NV];  // float accumulators, in registers with the int32 block sums (MR <= 7)
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      c[m][v] = kt0 == 0 ? V::zero()
                         : V::load_n(p.Y + (m0 + m) * p.ldy + n0 + v * L, static_cast<int>(imax(0, imin(L, ncols - v * L))));
  const I mask = V::set1_i32(0x0F0F0F0F);
  const int8_t* qa = g.q + m0 * g.ld;
  const int64_t b_first = kt0 / bs;
  for (int64_t b = b_first; b * bs < kt1; ++b) {
    const int64_t g_begin = imax(b * bs, kt0) / 8, g_end = imin((b + 1) * bs, kt1) / 8;
    const int32_t* qzb = SYM ? g.qz + b * p.M + m0 : nullptr;  // int32 zero-point term
    I acc[MR][NV];
    for (int m = 0; m < MR; ++m)
      for (int v = 0; v < NV; ++v) acc[m][v] = SYM ? V::set1_i32(qzb[m]) : V::zeroi();
    const uint8_t* pp = panel + (g_begin - kt0 / 8) * NV * kChunkBytes;
    const int8_t* qg = qa + g_begin * 8;
#pragma GCC unroll 1
    for (int64_t gi = g_begin; gi < g_end; ++gi, pp += NV * kChunkBytes, qg += 8) {
      const I x0 = V::load_i(pp), x1 = V::load_i(pp + kChunkBytes);
      const I lo0 = V::and_i(x0, mask), lo1 = V::and_i(x1, mask);
      for (int m = 0; m < MR; ++m) {
        const I alo = V::bcast32(qg + m * g.ld);
        acc[m][0] = V::dot(acc[m][0], lo0, alo);
        acc[m][1] = V::dot(acc[m][1], lo1, alo);
      }
      const I hi0 = V::and_i(V::srl32(x0, 4), mask), hi1 = V::and_i(V::srl32(x1, 4), mask);
      for (int m = 0; m < MR; ++m) {
        const I ahi = V::bcast32(qg + m * g.ld + 4);
        acc[m][0] = V::dot(acc[m][0], hi0, ahi);
        acc[m][1] = V::dot(acc[m][1], hi1, ahi);
      }
    }
    const int64_t bi = b - b_first;
    const float* sab = g.sa + b * p.M + m0;
    const float* rbb = g.rb + b * p.M + m0;
    const F s0 = V::load(sT + bi * NT), s1 = V::load(sT + bi * NT + L);
    const F z0 = V::load(zsT + bi * NT), z1 = V::load(zsT + bi * NT + L);
    for (int m = 0; m < MR; ++m) {
      const F sam = V::set1(sab[m]);
      const F rbm = V::set1(rbb[m]);
      if constexpr (SYM) {
        c[m][0] = V::fma(V::cvt(acc[m][0]), V::mul(s0, sam), c[m][0]);
        c[m][1] = V::fma(V::cvt(acc[m][1]), V::mul(s1, sam), c[m][1]);
      } else {
        c[m][0] = V::fnma(z0, rbm, V::fma(V::cvt(acc[m][0]), V::mul(s0, sam), c[m][0]));
        c[m][1] = V::fnma(z1, rbm, V::fma(V::cvt(acc[m][1]), V::mul(s1, sam), c[m][1]));
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int v = 0; v < NV; ++v)
      V::store_n(p.Y + (m0 + m) * p.ldy + n0 + v * L, c[m][v], static_cast<int>(imax(0, imin(L, ncols - v * L))));
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
// first M % tiles tiles have base + 1 rows, the others base.
template <int MR, bool SYM>
void micro_int8_rows(const GemmCtx& g, int64_t n0, int64_t kt0, int64_t kt1, const uint8_t* panel, const float* sT,
                     const float* zsT) {
  const int64_t M = g.p->M;
  const int64_t tiles = ceil_div(M, MR);
  const int64_t base = M / tiles, extra = M % tiles;
  int64_t m0 = 0;
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t rows = t < extra ? base + 1 : base;
    switch (rows) {
#define ONNXQ_CASE(R) \
  case R:             \
    if constexpr (R <= MR) micro_int8<R, SYM>(g, m0, n0, kt0, kt1, panel, sT, zsT); \
    break;
      ONNXQ_CASE(1) ONNXQ_CASE(2) ONNXQ_CASE(3) ONNXQ_CASE(4) ONNXQ_CASE(5) ONNXQ_CASE(6) ONNXQ_CASE(7)
      ONNXQ_CASE(8)
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
  const int64_t n0 = static_cast<int64_t>(t) * NT;
  const int64_t bs = w.block_size;
  const int64_t kt = INT8 ? kKtInt8 : kKtF32;  // multiple of kChunkK and of every block size
  const int64_t nblk_all = ceil_div(g.kp, bs);
  Scratch panel(5, INT8 ? static_cast<size_t>(kt / 8 * NV * kChunkBytes) : sizeof(float) * static_cast<size_t>(kt * NT));
  Scratch scales(6, sizeof(float) * static_cast<size_t>(2 * round_up(nblk_all, L) * NT));
  if (!panel.p || !scales.p) {
    __atomic_store_n(g.failed, 1, __ATOMIC_RELAXED);
    return;
  }
  float* sT = scales.as<float>();
  float* zsT = sT + round_up(nblk_all, L) * NT;
  tile_scales(w, n0, nblk_all, sT, zsT);
  for (int64_t kt0 = 0; kt0 < g.kp; kt0 += kt) {
    const int64_t kt1 = imin(g.kp, kt0 + kt);
    const int64_t b_first = kt0 / bs;
    const int64_t pf_delta = next_panel_delta(w, kt0, kt1, g.kp);
    if constexpr (INT8) {
      build_panel_int8(w, n0, kt0, kt1, pf_delta, panel.as<uint8_t>());
      if (g.qz)
        micro_int8_rows<kMrInt8, true>(g, n0, kt0, kt1, panel.as<uint8_t>(), sT + b_first * NT, zsT + b_first * NT);
      else
        micro_int8_rows<kMrInt8, false>(g, n0, kt0, kt1, panel.as<uint8_t>(), sT + b_first * NT, zsT + b_first * NT);
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
  if (!a.ok() || !qz.p) return kOutOfMemory;
  int32_t* qzp = sym ? qz.as<int32_t>() : nullptr;
  RowPrepCtx r{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), nullptr, qzp, a.sa.as<float>(), a.rb.as<float>(), kp, ld, nbp, false};
  runner.run(static_cast<size_t>(p.M), prep_rows_task, &r);
  int failed = 0;
  GemmCtx g{&w, &p, a.ap.as<float>(), a.q.as<int8_t>(), a.sa.as<float>(), a.rb.as<float>(), qzp, kp, ld, nbp, &failed};
  runner.run(static_cast<size_t>(ceil_div(w.N, NT)), p.int8_a ? gemm_task<true> : gemm_task<false>, &g);
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
