// AVX-512 VNNI kernel of packed.h: one 512-bit register holds the same 4 elements of a panel's 16 rows, so
// dpbusd against the token's broadcast activation dword sums 16 rows' products at once (u8 x s8 -> int32).
// Q8_0 weights are made unsigned by flipping their sign bit (w + 128), and 128 * sum(q) is taken off after.
// A block's 8 weight registers are unpacked once for up to 4 tokens.
#include "engine/packed_kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#pragma GCC push_options
#pragma GCC target("avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni")
// GCC 12 warns about the undefined pass-through operand inside _mm512_cvtph_ps / _mm512_cvtepi32_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvf::engine {
namespace {

constexpr int32_t kZero[] = {128, 8, 0};  // per PackedKind, after the sign flip of Q8_0

inline __m512i Dword(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// The 8 registers of one block: register j holds elements 4j..4j+3 of the 16 rows, unsigned.
template <PackedKind K>
inline void Weights(const uint8_t* quants, __m512i w[8]) {
  if constexpr (K == PackedKind::kQ8_0) {
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int j = 0; j < 8; ++j) w[j] = _mm512_xor_si512(_mm512_loadu_si512(quants + 64 * j), flip);
  } else {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {
      const __m512i raw = _mm512_loadu_si512(quants + 64 * c);
      w[c] = _mm512_and_si512(raw, m4);
      w[c + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
    }
  }
}

// Tokens t0 .. t0+T-1 of the panel.
template <PackedKind K, int T>
void Tokens(const PackedView& v, int64_t t0) {
  const PackedLayout& L = LayoutOf(K);
  const int64_t nb = v.n_blocks;
  __m512 acc[T], summ[T];
  for (int i = 0; i < T; ++i) acc[i] = summ[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = v.panel + b * L.bytes;
    PrefetchBlock(blk + kPrefetchBlocks * L.bytes, L.bytes);
    __m512i w[8];
    Weights<K>(blk + L.quants, w);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.scales)));
    for (int i = 0; i < T; ++i) {
      const int64_t tb = (t0 + i) * nb + b;
      const int8_t* q = v.xq + tb * 32;
      // Two independent chains of 4 dpbusd each (the integer sum is exact in any order).
      __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
      for (int j = 0; j < 8; j += 2) {
        s0 = _mm512_dpbusd_epi32(s0, w[j], Dword(q + 4 * j));
        s1 = _mm512_dpbusd_epi32(s1, w[j + 1], Dword(q + 4 * j + 4));
      }
      __m512i s = _mm512_add_epi32(s0, s1);
      if constexpr (kZero[static_cast<int>(K)] != 0)
        s = _mm512_sub_epi32(s, _mm512_set1_epi32(kZero[static_cast<int>(K)] * v.xsum[tb]));
      acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(v.xd[tb])), _mm512_cvtepi32_ps(s)));
      if constexpr (K == PackedKind::kQ4_1) {
        const __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.mins)));
        summ[i] = _mm512_add_ps(summ[i], _mm512_mul_ps(m, _mm512_set1_ps(v.xs[tb])));
      }
    }
  }
  const __mmask16 rows = static_cast<__mmask16>((1u << v.rows) - 1);
  for (int i = 0; i < T; ++i)
    _mm512_mask_storeu_ps(v.y + (t0 + i) * v.y_stride, rows,
                          K == PackedKind::kQ4_1 ? _mm512_add_ps(acc[i], summ[i]) : acc[i]);
}

template <PackedKind K>
void Panel(const PackedView& v) {
  int64_t t = 0;
  for (; t + 4 <= v.n_tokens; t += 4) Tokens<K, 4>(v, t);
  switch (v.n_tokens - t) {
    case 3:
      return Tokens<K, 3>(v, t);
    case 2:
      return Tokens<K, 2>(v, t);
    case 1:
      return Tokens<K, 1>(v, t);
    default:
      return;
  }
}

}  // namespace

void PackedPanelAvx512Vnni(const PackedView& v) {
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
#pragma GCC diagnostic pop
#pragma GCC pop_options

#else
namespace kvf::engine {
void PackedPanelAvx512Vnni(const PackedView& v) { PackedPanelScalar(v); }  // never selected off x86
}  // namespace kvf::engine
#endif
