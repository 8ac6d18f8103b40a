// AVX2 vector wrapper for kernel_simd_impl.h (int8 dot products via vpmaddubsw).
struct V256 {
  static constexpr int L = 8;
  using F = __m256;
  using I = __m256i;
  static I lane_mask(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static F zero() { return _mm256_setzero_ps(); }
  static I zeroi() { return _mm256_setzero_si256(); }
  static F set1(float x) { return _mm256_set1_ps(x); }
  static I set1_i32(int32_t x) { return _mm256_set1_epi32(x); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load_n(const float* p, int n) { return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lane_mask(n)); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, F v, int n) {
    if (n >= 8)
      _mm256_storeu_ps(p, v);
    else if (n > 0)
      _mm256_maskstore_ps(p, lane_mask(n), v);
  }
  static I load_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static I load_i_n(const void* p, int nbytes) { return _mm256_maskload_epi32(static_cast<const int*>(p), lane_mask(nbytes / 4)); }
  static void store_i(void* p, I v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
  static I castf2i(F a) { return _mm256_castps_si256(a); }
  static F casti2f(I a) { return _mm256_castsi256_ps(a); }
  static I and_i(I a, I b) { return _mm256_and_si256(a, b); }
  static I srl32(I a, int s) { return _mm256_srl_epi32(a, _mm_cvtsi32_si128(s)); }
  static I add_i32(I a, I b) { return _mm256_add_epi32(a, b); }
  static F nib_f(I x) { return _mm256_cvtepi32_ps(_mm256_and_si256(x, _mm256_set1_epi32(15))); }
  static F nibbles_to_f(uint64_t bytes) {
    __m128i b = _mm_cvtsi32_si128(static_cast<int>(bytes & 0xFFFFFFFFu));
    b = _mm_unpacklo_epi8(b, b);
    I d = _mm256_cvtepu8_epi32(b);
    d = _mm256_srlv_epi32(d, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
    return _mm256_cvtepi32_ps(_mm256_and_si256(d, _mm256_set1_epi32(15)));
  }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
  static F fms(F a, F b, F c) { return _mm256_fmsub_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F abs(F a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF))); }
  static float reduce_max(F a) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(F a) {
    __m128 m = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    m = _mm_add_ps(m, _mm_movehl_ps(m, m));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static int32_t reduce_add_i32(I a) {
    __m128i m = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0x4E));
    m = _mm_add_epi32(m, _mm_shuffle_epi32(m, 0xB1));
    return _mm_cvtsi128_si32(m);
  }
  static F cvt(I a) { return _mm256_cvtepi32_ps(a); }
  static I cvt_round(F a) { return _mm256_cvtps_epi32(a); }
  static void store_i8(int8_t* p, I v) {
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi16(w, w));
  }
  static void shuffle_groups16(int8_t* p) {
    const __m128i idx = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
    __m128i* q = reinterpret_cast<__m128i*>(p);
    _mm_storeu_si128(q, _mm_shuffle_epi8(_mm_loadu_si128(q), idx));
  }
  static F permute(F v, I idx) { return _mm256_permutevar8x32_ps(v, idx); }
  static I lane_shift_idx(int s) { return _mm256_srl_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm_cvtsi32_si128(s)); }
  static I dot2(I acc, I u1, I s1, I u2, I s2) {
    const I p = _mm256_add_epi16(_mm256_maddubs_epi16(u1, s1), _mm256_maddubs_epi16(u2, s2));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
  static I dot(I acc, I u, I s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  }
  static I bcast32(const void* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm256_set1_epi32(x);
  }
  static void transpose(I r[8]) {
    I t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; ++i) {
      u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i + 0], t[4 * i + 2]);
      u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i + 0], t[4 * i + 2]);
      u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
      u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int s = 0; s < 4; ++s) {
      r[s] = _mm256_permute2x128_si256(u[s], u[4 + s], 0x20);
      r[4 + s] = _mm256_permute2x128_si256(u[s], u[4 + s], 0x31);
    }
  }
  static F load_half(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void store_half(uint16_t* p, F v) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
