// Single-thread peak of 512-bit VPDPBUSD and of 512-bit FMA (fp32): 16 independent
// accumulator chains, register operands only. Built and loaded by bench/bench_cpu_peak.py.
// Inline asm: GCC otherwise copies accumulators between registers around the tied operand.
#include <immintrin.h>

#include <cstdint>

#define ONNXQ_X16(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) OP(15)

extern "C" {

// iters x 16 vpdpbusd zmm: 16 * 64 int8 multiply-adds each. Returns a checksum.
int64_t peak_vpdpbusd(int64_t iters) {
  const __m512i u = _mm512_set1_epi32(0x01020304), s = _mm512_set1_epi32(0x01FF01FF);
#define DECL(i) __m512i c##i = _mm512_set1_epi32(i);
  ONNXQ_X16(DECL)
#undef DECL
  for (int64_t t = 0; t < iters; ++t) {
#define STEP(i) __asm__("vpdpbusd %2, %1, %0" : "+v"(c##i) : "v"(u), "v"(s));
    ONNXQ_X16(STEP)
#undef STEP
  }
  __m512i sum = _mm512_setzero_si512();
#define ADD(i) sum = _mm512_add_epi32(sum, c##i);
  ONNXQ_X16(ADD)
#undef ADD
  return _mm512_reduce_add_epi32(sum);
}

// iters x 16 vfmadd231ps zmm: 16 * 16 fp32 multiply-adds each. Returns a checksum.
double peak_fma(int64_t iters) {
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
#define DECL(i) __m512 c##i = _mm512_set1_ps(static_cast<float>(i));
  ONNXQ_X16(DECL)
#undef DECL
  for (int64_t t = 0; t < iters; ++t) {
#define STEP(i) __asm__("vfmadd231ps %2, %1, %0" : "+v"(c##i) : "v"(a), "v"(b));
    ONNXQ_X16(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, c##i);
  ONNXQ_X16(ADD)
#undef ADD
  return _mm512_reduce_add_ps(sum);
}

}  // extern "C"
