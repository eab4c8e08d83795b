// AVX-512 TileStep and f16 conversion (attention_kernels.h): one 512-bit register is the contract's 16 lanes.
#include "engine/attention_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>

#pragma GCC push_options
#pragma GCC target("avx512f,f16c,avx2,fma")
// GCC 12's AVX-512 intrinsics pass _mm512_undefined_*() as the unused merge source, which its own
// uninitialized-use analysis then reports once they are inlined here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvf::engine {
namespace {

// Tree16 of the contract: halves, quarters, then lanes 0+2 / 1+3, then 0+1.
inline float Tree16(__m512 a) {
  const __m256 b =
      _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  const __m128 c = _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
  const __m128 d = _mm_add_ps(c, _mm_movehl_ps(c, c));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_shuffle_ps(d, d, 1)));
}

// Tree16 of four keys' lanes at once, the same pairs as Tree16: out[u] = Tree16(a_u).
inline void s4(__m512 a0, __m512 a1, __m512 a2, __m512 a3, float* out) {
  const __m512 b01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 b23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  // 128-bit lane u now holds c[0..3] of key u.
  const __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xDD));
  const __m512 d = _mm512_add_ps(c, _mm512_shuffle_ps(c, c, 0x4E));
  const __m512 e = _mm512_add_ps(d, _mm512_shuffle_ps(d, d, 0xB1));
  const __m512i lane0 = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  _mm_storeu_ps(out, _mm512_castps512_ps128(_mm512_permutexvar_ps(lane0, e)));
}

inline __m512 ExpNeg16(__m512 x) {
  using namespace expneg;
  const __mmask16 ok = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kMin), _CMP_GE_OQ);
  const __m512 n = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)), _mm512_set1_ps(kRound)),
                                 _mm512_set1_ps(kRound));
  __m512 r = _mm512_sub_ps(x, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Hi)));
  r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(kLn2Lo)));
  const __m512 rr = _mm512_mul_ps(r, r);
  __m512 p = _mm512_set1_ps(kP0);
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kP1));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kP2));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kP3));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kP4));
  p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(kP5));
  __m512 y = _mm512_mul_ps(p, rr);
  y = _mm512_add_ps(y, r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(ok, y, _mm512_castsi512_ps(e));
}

template <int C>
void Step(const float* q, const float* k, const float* v, int n_keys, float scale, float* m, float* l, float* acc) {
  constexpr int hd = 16 * C;
  alignas(64) float s[64], p[64];
  __m512 qv[C];
  for (int c = 0; c < C; ++c) qv[c] = _mm512_loadu_ps(q + 16 * c);
  auto dot = [&](int j) {
    const float* kj = k + j * hd;
    __m512 a = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kj));
    for (int c = 1; c < C; ++c) a = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kj + 16 * c), a);
    return a;
  };
  int j = 0;
  for (; j + 4 <= n_keys; j += 4) s4(dot(j), dot(j + 1), dot(j + 2), dot(j + 3), s + j);
  for (; j < n_keys; ++j) s[j] = Tree16(dot(j));
  // s * scale and the tile max over the valid keys (max is exact, so its order does not matter).
  __m512 mt = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < 64; j += 16) {
    if (j >= n_keys) break;
    const __mmask16 valid = n_keys - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n_keys - j)) - 1);
    const __m512 sj = _mm512_mul_ps(_mm512_maskz_loadu_ps(valid, s + j), _mm512_set1_ps(scale));
    _mm512_store_ps(s + j, sj);
    mt = _mm512_mask_max_ps(mt, valid, mt, sj);
  }
  const float mx = std::fmax(*m, _mm512_reduce_max_ps(mt));
  const __m512 mv = _mm512_set1_ps(mx);
  __m512 u = _mm512_setzero_ps();
  for (int j = 0; j < 64; j += 16) {
    __m512 pj = _mm512_setzero_ps();
    if (j < n_keys) {
      const __mmask16 valid = n_keys - j >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (n_keys - j)) - 1);
      pj = _mm512_maskz_mov_ps(valid, ExpNeg16(_mm512_sub_ps(_mm512_load_ps(s + j), mv)));
    }
    _mm512_store_ps(p + j, pj);
    u = j == 0 ? pj : _mm512_add_ps(u, pj);
  }
  const float lt = Tree16(u);
  __m512 av[C];
  for (int c = 0; c < C; ++c) av[c] = _mm512_loadu_ps(acc + 16 * c);
  if (*l > 0.0f && mx > *m) {
    const float cr = ExpNeg(*m - mx);
    *l = *l * cr;
    for (int c = 0; c < C; ++c) av[c] = _mm512_mul_ps(av[c], _mm512_set1_ps(cr));
  }
  *l = *l + lt;
  for (int j = 0; j < n_keys; ++j) {
    const __m512 pj = _mm512_set1_ps(p[j]);
    const float* vj = v + j * hd;
    for (int c = 0; c < C; ++c) av[c] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16 * c), av[c]);
  }
  for (int c = 0; c < C; ++c) _mm512_storeu_ps(acc + 16 * c, av[c]);
  *m = mx;
}

}  // namespace

void AttnTileStepAvx512(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                        float* l, float* acc) {
  switch (hd / 16) {
    case 1:
      return Step<1>(q, k, v, n_keys, scale, m, l, acc);
    case 2:
      return Step<2>(q, k, v, n_keys, scale, m, l, acc);
    case 4:
      return Step<4>(q, k, v, n_keys, scale, m, l, acc);
    case 8:
      return Step<8>(q, k, v, n_keys, scale, m, l, acc);
    default:
      return AttnTileStepScalar(q, k, v, n_keys, hd, scale, m, l, acc);
  }
}

void AttnHalfToFloatAvx512(const uint16_t* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

}  // namespace kvf::engine

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
