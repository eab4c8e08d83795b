// The x86 tile loop shared by qdot_avx2.cc and qdot_avx512vnni.cc, each of which includes it after its
// `#pragma GCC target` with its own block-product policy (Products::Signed / Products::Unsigned: the 8
// int32 lane sums L[l] = sum of 4 adjacent byte products, qdot.h). Everything here has internal linkage,
// so the two target-specific copies never meet at link time.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "engine/qdot_kernels.h"

namespace kvf::engine {
namespace {

// ((a0+a4) + (a2+a6)) + ((a1+a5) + (a3+a7)): the order qdot.h fixes.
inline float ReduceLanes(__m256 a) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  const __m128 s2 = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

// R rows (kept in registers) against one token at a time: each activation block is loaded once per R rows.
template <class Products, int R, bool kMin>
void Tile(const QTileView& v) {
  const int64_t nb = v.n_blocks;
  for (int64_t t = 0; t < v.n_tokens; ++t) {
    const int8_t* xq = v.xq + t * nb * 32;
    const float* xd = v.xd + t * nb;
    const float* xs = v.xs + t * nb;
    __m256 acc[R];
    float summ[R];
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_setzero_ps();
      summ[r] = 0;
    }
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * b));
      const __m256 d = _mm256_set1_ps(xd[b]);
      for (int r = 0; r < R; ++r) {
        const int64_t rb = r * nb + b;
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v.wq + 32 * rb));
        // Weights with a min are nibbles 0..15, usable directly as the unsigned operand.
        const __m256i lanes = kMin ? Products::Unsigned(w, x) : Products::Signed(w, x);
        const __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(v.wscale + 8 * rb), d);
        acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(scale, _mm256_cvtepi32_ps(lanes)));
        if (kMin) summ[r] = summ[r] + v.wmin[rb] * xs[b];
      }
    }
    for (int r = 0; r < R; ++r) v.y[t * v.y_stride + r] = ReduceLanes(acc[r]) + summ[r];
  }
}

template <class Products, bool kMin>
void TileRows(const QTileView& v) {
  switch (v.rows) {
    case 1:
      Tile<Products, 1, kMin>(v);
      return;
    case 2:
      Tile<Products, 2, kMin>(v);
      return;
    case 3:
      Tile<Products, 3, kMin>(v);
      return;
    default:
      Tile<Products, 4, kMin>(v);
      return;
  }
}

template <class Products>
void TileAny(const QTileView& v) {
  if (v.with_min)
    TileRows<Products, true>(v);
  else
    TileRows<Products, false>(v);
}

}  // namespace
}  // namespace kvf::engine
