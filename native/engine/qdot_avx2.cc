// AVX2 (+F16C) parts of qdot.h: the kernel, the activation quantization and the unpacking of the 32-element
// block types (the last two used by the AVX-512 level too). The kernel forms byte products with maddubs (u8 x s8 ->
// pairs summed to int16) and madd (pairs of int16 -> int32). No int16 saturation can occur: one operand is |w| <= 128
// or a nibble, the other an activation in [-127, 127], so a pair is at most 2 * 128 * 127 = 32512.
#include "engine/qdot_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#include "engine/qdot_x86_tile.h"

namespace kvf::engine {
namespace {

struct Avx2Products {
  static __m256i Signed(__m256i w, __m256i x) {
    // |w| * (x with w's sign) = w * x, with the unsigned operand first as maddubs needs.
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
  }
  static __m256i Unsigned(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
  }
};

inline float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);  // exact, like half::HalfToFloat
}

// One block of 32: q = the 32 nibbles (low nibbles first, as ggml orders them), minus `offset`.
inline void Nibbles(const uint8_t* qs, __m256i offset, int8_t* q) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const __m256i bytes = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_sub_epi8(bytes, offset));
}

inline float ViaHalf(float f) { return _cvtsh_ss(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT)); }

}  // namespace

void QTileAvx2(const QTileView& v) { TileAny<Avx2Products>(v); }

void QQuantizeAvx2(const float* x, int64_t n_blocks, int8_t* q, float* d, float* s, int32_t* sums) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  for (int64_t i = 0; i < n_blocks; ++i, x += 32, q += 32) {
    __m256 v[4];
    // max(|x|, m) keeps m when |x| is NaN, as std::max(m, |x|) does in the plain-C version.
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    const __m256 idv = _mm256_set1_ps(id);
    __m256i qi[4];
    for (int k = 0; k < 4; ++k) {
      // max(t, -127) maps NaN to -127, like the plain-C clamp; then round half to even.
      const __m256 t = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[k], idv), lo), hi);
      qi[k] = _mm256_cvtps_epi32(_mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const __m256i sum8 = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
    __m128i sum4 = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
    sum4 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
    sum4 = _mm_add_epi32(sum4, _mm_shuffle_epi32(sum4, 1));
    const int sum = _mm_cvtsi128_si32(sum4);
    // int32 -> int8 (no saturation: |q| <= 127); the packs interleave 128-bit lanes, the permute undoes it.
    const __m256i p16a = _mm256_packs_epi32(qi[0], qi[1]), p16b = _mm256_packs_epi32(qi[2], qi[3]);
    const __m256i p8 =
        _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), p8);
    d[i] = ViaHalf(dd);
    s[i] = ViaHalf(static_cast<float>(sum) * dd);
    sums[i] = sum;
  }
}

bool QUnpackAvx2(QUnpackKind kind, const uint8_t* first, uint64_t row_bytes, int rows, int64_t n_blocks, int8_t* q,
                 float* scale, float* min) {
  for (int r = 0; r < rows; ++r) {
    const uint8_t* b = first + static_cast<uint64_t>(r) * row_bytes;
    for (int64_t i = 0; i < n_blocks; ++i, q += 32, scale += 8, ++min) {
      switch (kind) {
        case QUnpackKind::kQ8_0:
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2)));
          _mm256_storeu_ps(scale, _mm256_set1_ps(Half(b)));
          b += 34;
          break;
        case QUnpackKind::kQ4_0:
          Nibbles(b + 2, _mm256_set1_epi8(8), q);
          _mm256_storeu_ps(scale, _mm256_set1_ps(Half(b)));
          b += 18;
          break;
        case QUnpackKind::kQ4_1:
          Nibbles(b + 4, _mm256_setzero_si256(), q);
          _mm256_storeu_ps(scale, _mm256_set1_ps(Half(b)));
          *min = Half(b + 2);
          b += 20;
          break;
        default:
          return false;
      }
    }
  }
  return true;
}

}  // namespace kvf::engine
#pragma GCC pop_options

#else
namespace kvf::engine {
// Never selected off x86.
void QTileAvx2(const QTileView& v) { QTileScalar(v); }
bool QUnpackAvx2(QUnpackKind, const uint8_t*, uint64_t, int, int64_t, int8_t*, float*, float*) { return false; }
void QQuantizeAvx2(const float*, int64_t, int8_t*, float*, float*, int32_t*) {}
}  // namespace kvf::engine
#endif
