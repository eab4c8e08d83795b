// AVX2 kernel of qdot.h: byte products with maddubs (u8 x s8 -> pairs summed to int16) and madd (pairs of
// int16 -> int32). No int16 saturation can occur: one operand is |w| <= 128 or a nibble, the other an
// activation in [-127, 127], so a pair is at most 2 * 128 * 127 = 32512.
#include "engine/qdot_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx2")
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

}  // namespace

void QTileAvx2(const QTileView& v) { TileAny<Avx2Products>(v); }

}  // namespace kvf::engine
#pragma GCC pop_options

#else
namespace kvf::engine {
void QTileAvx2(const QTileView& v) { QTileScalar(v); }  // never selected off x86
}  // namespace kvf::engine
#endif
