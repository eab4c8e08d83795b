// AVX2 (+F16C) parts of qdot.h: the kernel, and the unpacking of the 32-element block types (used by the
// AVX-512 level too). The kernel forms byte products with maddubs (u8 x s8 -> pairs summed to int16) and
// madd (pairs of int16 -> int32). No int16 saturation can occur: one operand is |w| <= 128 or a nibble, the
// other an activation in [-127, 127], so a pair is at most 2 * 128 * 127 = 32512.
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

}  // namespace

void QTileAvx2(const QTileView& v) { TileAny<Avx2Products>(v); }

bool QUnpackAvx2(QUnpackKind kind, const uint8_t* first, uint64_t row_bytes, int rows, int64_t n_blocks, int8_t* q,
                 float* scale, float* min) {
  for (int r = 0; r < rows; ++r) {
    const uint8_t* b = first + static_cast<uint64_t>(r) * row_bytes;
    for (int64_t i = 0; i < n_blocks; ++i, q += 32, scale += 8, ++min) {
      switch (kind) {
        case QUnpackKind::kQ8_0:
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2)));
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
        default: return false;
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
}  // namespace kvf::engine
#endif
