// AVX2 (+F16C) kernel of packed.h: a panel's 16 rows as two halves of 8 lanes. Byte products come from maddubs
// (u8 x s8 -> int16 pairs) and madd (-> int32). Q4_x nibbles (<= 15) against activations in [-127, 127] give
// pairs of at most 3810, so the 8 pair sums of a block add up in int16 before one madd (<= 30480). Q8_0 takes
// |w| <= 128 against x with w's sign: pairs of at most 32512, widened at once.
#include "engine/packed_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx2,f16c")

namespace kvf::engine {
namespace {

inline __m256i Dword(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// S for rows 8h..8h+7 of one block against one token's 32 activations q (zero point not yet taken off).
template <PackedKind K>
inline __m256i Sums(const uint8_t* blk, int h, const int8_t* q) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (K == PackedKind::kQ8_0) {
    __m256i s = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * j + 32 * h));
      const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(Dword(q + 4 * j), w));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(p, ones));
    }
    return s;
  } else {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256i p = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * c + 32 * h));
      const __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
      p = _mm256_add_epi16(p, _mm256_maddubs_epi16(lo, Dword(q + 4 * c)));
      p = _mm256_add_epi16(p, _mm256_maddubs_epi16(hi, Dword(q + 16 + 4 * c)));
    }
    return _mm256_madd_epi16(p, ones);
  }
}

template <PackedKind K>
void Panel(const PackedView& v) {
  const PackedLayout& L = LayoutOf(K);
  const int64_t nb = v.n_blocks;
  for (int64_t t = 0; t < v.n_tokens; ++t) {
    alignas(32) float out[kPanelRows];
    for (int h = 0; h < 2; ++h) {
      __m256 acc = _mm256_setzero_ps(), summ = _mm256_setzero_ps();
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = v.panel + b * L.bytes;
        const int64_t tb = t * nb + b;
        __m256i s = Sums<K>(blk + L.quants, h, v.xq + tb * 32);
        if constexpr (K == PackedKind::kQ4_0) s = _mm256_sub_epi32(s, _mm256_set1_epi32(8 * v.xsum[tb]));
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + L.scales + 16 * h)));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_mul_ps(d, _mm256_set1_ps(v.xd[tb])), _mm256_cvtepi32_ps(s)));
        if constexpr (K == PackedKind::kQ4_1) {
          const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + L.mins + 16 * h)));
          summ = _mm256_add_ps(summ, _mm256_mul_ps(m, _mm256_set1_ps(v.xs[tb])));
        }
      }
      _mm256_store_ps(out + 8 * h, K == PackedKind::kQ4_1 ? _mm256_add_ps(acc, summ) : acc);
    }
    std::memcpy(v.y + t * v.y_stride, out, sizeof(float) * static_cast<size_t>(v.rows));
  }
}

}  // namespace

void PackedPanelAvx2(const PackedView& v) {
  switch (v.kind) {
    case PackedKind::kQ8_0:
      return Panel<PackedKind::kQ8_0>(v);
    case PackedKind::kQ4_0:
      return Panel<PackedKind::kQ4_0>(v);
    case PackedKind::kQ4_1:
      return Panel<PackedKind::kQ4_1>(v);
  }
}

}  // namespace kvf::engine
#pragma GCC pop_options

#else
namespace kvf::engine {
void PackedPanelAvx2(const PackedView& v) { PackedPanelScalar(v); }  // never selected off x86
}  // namespace kvf::engine
#endif
