// AVX2 + F16C + FMA TileStep and f16 conversion (attention_kernels.h): the contract's 16 lanes are two 256-bit
// registers, lanes 0-7 and 8-15, so Tree16 starts by adding them.
#include "engine/attention_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>

#pragma GCC push_options
#pragma GCC target("avx2,f16c,fma")

namespace kvf::engine {
namespace {

inline float Tree16(__m256 lo, __m256 hi) {
  const __m256 b = _mm256_add_ps(lo, hi);
  const __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
  const __m128 d = _mm_add_ps(c, _mm_movehl_ps(c, c));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

inline __m256 ExpNeg8(__m256 x) {
  using namespace expneg;
  const __m256 ok = _mm256_cmp_ps(x, _mm256_set1_ps(kMin), _CMP_GE_OQ);
  const __m256 n = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)), _mm256_set1_ps(kRound)),
                                 _mm256_set1_ps(kRound));
  __m256 r = _mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Hi)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(kLn2Lo)));
  const __m256 rr = _mm256_mul_ps(r, r);
  __m256 p = _mm256_set1_ps(kP0);
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP1));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP2));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP3));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP4));
  p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(kP5));
  __m256 y = _mm256_mul_ps(p, rr);
  y = _mm256_add_ps(y, r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(ok, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// hd = 8 * R (R even, at most 32 registers of q and acc).
void Step(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m, float* l,
          float* acc) {
  const int R = hd / 8;
  alignas(32) float s[64], p[64];
  __m256 qv[32];
  for (int r = 0; r < R; ++r) qv[r] = _mm256_loadu_ps(q + 8 * r);
  float mt = -INFINITY;
  for (int j = 0; j < n_keys; ++j) {
    const float* kj = k + j * hd;
    __m256 lo = _mm256_mul_ps(qv[0], _mm256_loadu_ps(kj));
    __m256 hi = _mm256_mul_ps(qv[1], _mm256_loadu_ps(kj + 8));
    for (int r = 2; r < R; r += 2) {
      lo = _mm256_fmadd_ps(qv[r], _mm256_loadu_ps(kj + 8 * r), lo);
      hi = _mm256_fmadd_ps(qv[r + 1], _mm256_loadu_ps(kj + 8 * r + 8), hi);
    }
    s[j] = Tree16(lo, hi) * scale;
    mt = std::fmax(mt, s[j]);
  }
  const float mx = std::fmax(*m, mt);
  const __m256 mv = _mm256_set1_ps(mx);
  for (int j = 0; j < 64; j += 8) {
    __m256 pj = _mm256_setzero_ps();
    if (j < n_keys) {
      const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(j), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n_keys), idx));
      pj = _mm256_and_ps(valid, ExpNeg8(_mm256_sub_ps(_mm256_load_ps(s + j), mv)));
    }
    _mm256_store_ps(p + j, pj);
  }
  __m256 ulo = _mm256_load_ps(p), uhi = _mm256_load_ps(p + 8);
  for (int j = 16; j < 64; j += 16) {
    ulo = _mm256_add_ps(ulo, _mm256_load_ps(p + j));
    uhi = _mm256_add_ps(uhi, _mm256_load_ps(p + j + 8));
  }
  const float lt = Tree16(ulo, uhi);
  __m256 av[32];
  for (int r = 0; r < R; ++r) av[r] = _mm256_loadu_ps(acc + 8 * r);
  if (*l > 0.0f && mx > *m) {
    const float cr = ExpNeg(*m - mx);
    *l = *l * cr;
    for (int r = 0; r < R; ++r) av[r] = _mm256_mul_ps(av[r], _mm256_set1_ps(cr));
  }
  *l = *l + lt;
  for (int j = 0; j < n_keys; ++j) {
    const __m256 pj = _mm256_set1_ps(p[j]);
    const float* vj = v + j * hd;
    for (int r = 0; r < R; ++r) av[r] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * r), av[r]);
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(acc + 8 * r, av[r]);
  *m = mx;
}

}  // namespace

bool AttnAvx2Usable() {
  static const bool fma = __builtin_cpu_supports("fma");
  return fma;
}

void AttnTileStepAvx2(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                      float* l, float* acc) {
  Step(q, k, v, n_keys, hd, scale, m, l, acc);
}

void AttnHalfToFloatAvx2(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

}  // namespace kvf::engine

#pragma GCC pop_options
#endif
