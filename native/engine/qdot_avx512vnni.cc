// AVX-512 VNNI kernel of qdot.h, on 256-bit vectors (AVX512VL): dpbusd sums the 4 adjacent u8 x s8
// products of each lane straight into int32, without maddubs' int16 step. (512-bit vectors would hold two
// blocks with different scales, and Zen 4 splits them into two 256-bit halves anyway.)
#include "engine/qdot_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>

#pragma GCC push_options
#pragma GCC target("avx2,avx512f,avx512vl,avx512bw,avx512vnni")
#include "engine/qdot_x86_tile.h"

namespace kvf::engine {
namespace {

struct VnniProducts {
  static __m256i Signed(__m256i w, __m256i x) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
  }
  static __m256i Unsigned(__m256i w, __m256i x) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x); }
};

}  // namespace

void QTileAvx512Vnni(const QTileView& v) { TileAny<VnniProducts>(v); }

}  // namespace kvf::engine
#pragma GCC pop_options

#else
namespace kvf::engine {
void QTileAvx512Vnni(const QTileView& v) { QTileScalar(v); }  // never selected off x86
}  // namespace kvf::engine
#endif
