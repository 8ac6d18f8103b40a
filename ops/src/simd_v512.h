// AVX-512 vector wrapper for kernel_simd_impl.h. Included after a target pragma; needs
// `constexpr bool kVnni` in the enclosing scope (true: vpdpbusd; false: vpmaddubsw).
struct V512 {
  static constexpr int L = 16;
  using F = __m512;
  using I = __m512i;
  static __mmask16 mask(int n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n < 0 ? 0 : n)) - 1); }
  static F zero() { return _mm512_setzero_ps(); }
  static I zeroi() { return _mm512_setzero_si512(); }
  static F set1(float x) { return _mm512_set1_ps(x); }
  static I set1_i32(int32_t x) { return _mm512_set1_epi32(x); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, F v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static I load_i(const void* p) { return _mm512_loadu_si512(p); }
  static I load_i_n(const void* p, int nbytes) { return _mm512_maskz_loadu_epi32(mask(nbytes / 4), p); }
  static void store_i(void* p, I v) { _mm512_storeu_si512(p, v); }
  static I castf2i(F a) { return _mm512_castps_si512(a); }
  static F casti2f(I a) { return _mm512_castsi512_ps(a); }
  static I and_i(I a, I b) { return _mm512_and_si512(a, b); }
  static I srl32(I a, int s) { return _mm512_srl_epi32(a, _mm_cvtsi32_si128(s)); }
  static I add_i32(I a, I b) { return _mm512_add_epi32(a, b); }
  // float(low 4 bits of each dword): a 16-entry table lookup (vpermps ignores higher bits).
  static F nib_f(I x) {
    return _mm512_permutexvar_ps(x, _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  // 16 nibbles of 8 bytes (low nibble first) -> 16 floats.
  static F nibbles_to_f(uint64_t bytes) {
    __m128i b = _mm_cvtsi64_si128(static_cast<long long>(bytes));
    b = _mm_unpacklo_epi8(b, b);
    I d = _mm512_cvtepu8_epi32(b);
    d = _mm512_srlv_epi32(d, _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4));
    return _mm512_cvtepi32_ps(_mm512_and_si512(d, _mm512_set1_epi32(15)));
  }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }
  static F fms(F a, F b, F c) { return _mm512_fmsub_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F abs(F a) { return _mm512_abs_ps(a); }
  static float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
  static float reduce_add(F a) { return _mm512_reduce_add_ps(a); }
  static int32_t reduce_add_i32(I a) { return _mm512_reduce_add_epi32(a); }
  static F cvt(I a) { return _mm512_cvtepi32_ps(a); }
  static I cvt_round(F a) { return _mm512_cvtps_epi32(a); }  // MXCSR: round half to even
  static void store_i8(int8_t* p, I v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtsepi32_epi8(v)); }
  static void shuffle_groups16(int8_t* p) {
    const __m128i idx = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    __m128i* q = reinterpret_cast<__m128i*>(p);
    _mm_storeu_si128(q, _mm_shuffle_epi8(_mm_loadu_si128(q), idx));
  }
  static F permute(F v, I idx) { return _mm512_permutexvar_ps(idx, v); }
  static I lane_shift_idx(int s) {
    return _mm512_srl_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm_cvtsi32_si128(s));
  }
  // acc + sum of u1*s1 + u2*s2 over groups of 4 bytes (u: unsigned codes, s: signed int8).
  static I dot2(I acc, I u1, I s1, I u2, I s2) {
    if constexpr (kVnni) {
      return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc, u1, s1), u2, s2);
    } else {
      // |15*127*2*2| < 2^15: no saturation in the 16-bit sums
      const I p = _mm512_add_epi16(_mm512_maddubs_epi16(u1, s1), _mm512_maddubs_epi16(u2, s2));
      return _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)));
    }
  }
  // acc + sum of u*s over groups of 4 bytes; without VNNI through 16-bit products.
  // vpdpbusd as asm: with the intrinsic GCC 12 copies accumulators between registers
  // around the tied operand, and the copies take issue slots from vpdpbusd (measured on
  // Zen 5: a 7x2 tile loop with broadcasts at 70 % of peak with the intrinsic, 97 % so).
  static I dot(I acc, I u, I s) {
    if constexpr (kVnni) {
      __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
      return acc;
    } else {
      return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
    }
  }
  static I bcast32(const void* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm512_set1_epi32(x);
  }
  static void transpose(I r[16]) {
    I t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; ++i) {
      u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
      u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
      u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
      u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    // u[4i+s] 128-bit lane q = rows 4i..4i+3 of column 4q+s
    for (int s = 0; s < 4; ++s) {
      const I x0 = _mm512_shuffle_i32x4(u[s], u[4 + s], 0x44);
      const I x1 = _mm512_shuffle_i32x4(u[s], u[4 + s], 0xEE);
      const I x2 = _mm512_shuffle_i32x4(u[8 + s], u[12 + s], 0x44);
      const I x3 = _mm512_shuffle_i32x4(u[8 + s], u[12 + s], 0xEE);
      r[0 + s] = _mm512_shuffle_i32x4(x0, x2, 0x88);
      r[4 + s] = _mm512_shuffle_i32x4(x0, x2, 0xDD);
      r[8 + s] = _mm512_shuffle_i32x4(x1, x3, 0x88);
      r[12 + s] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
    }
  }
  static F load_half(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static void store_half(uint16_t* p, F v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
