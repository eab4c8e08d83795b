// The per-ISA kernels behind PagedAttention (attention.h), on raw pointers. The SIMD ones live in files
// compiled for their target with a pragma (like qdot_kernels.h's); all are built with -ffp-contract=off, so
// the only fused multiply-adds are the explicit ones below (std::fma in plain C: one rounding, like the
// instruction, so every kernel still gets the same bits).
//
// TileStep: one query row q (hd floats) over one tile of n_keys (1..kKvTile) keys whose K and V rows (hd
// floats each) are contiguous, updating the row's state (m, l, acc[hd]); l == 0 means "empty" (m = -inf,
// acc = 0). The operations, in this order, are the contract every kernel keeps:
//   s[j]  = Tree16(a) * scale, a[i] = q[i] * k_j[i] then a[i] = fma(q[16c + i], k_j[16c + i], a[i]) for c = 1, 2, ...
//   M     = max(m, max_j s[j])
//   p[j]  = ExpNeg(s[j] - M), and 0 for j >= n_keys up to kKvTile
//   lt    = Tree16(u), u[i] = p[i] + p[16 + i] + p[32 + i] + p[48 + i] (left to right)
//   if l > 0 and M > m:  c = ExpNeg(m - M); l = l * c; acc[i] = acc[i] * c
//   l     = l + lt
//   acc[i] = fma(p[j], v_j[i], acc[i]), for j = 0, 1, ... in order
//   m     = M
// Tree16(a): b[i] = a[i] + a[i + 8] (i < 8), c[i] = b[i] + b[i + 4] (i < 4), d[i] = c[i] + c[i + 2] (i < 2),
// d[0] + d[1]: the natural horizontal sum of one 512-bit register (or of two 256-bit ones, added first).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvf::engine {

constexpr int kAttnLanes = 16;

// exp(x) for x <= 0 (Cephes' expf polynomial on the range-reduced argument, without FMA), 0 below -87 so
// that 2^n stays a normal float. Every kernel computes these operations in this order, so they agree on the bits.
namespace expneg {
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: t + kRound - kRound rounds t to the nearest integer
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
constexpr float kP0 = 1.9875691500e-4f, kP1 = 1.3981999507e-3f, kP2 = 8.3334519073e-3f, kP3 = 4.1665795894e-2f,
                kP4 = 1.6666665459e-1f, kP5 = 5.0000001201e-1f;
constexpr float kMin = -87.0f;
}  // namespace expneg

static inline float ExpNeg(float x) {
  using namespace expneg;
  if (!(x >= kMin)) return 0.0f;
  const float n = (x * kLog2e + kRound) - kRound;
  float r = x - n * kLn2Hi;
  r = r - n * kLn2Lo;
  const float rr = r * r;
  float p = kP0;
  p = p * r + kP1;
  p = p * r + kP2;
  p = p * r + kP3;
  p = p * r + kP4;
  p = p * r + kP5;
  float y = p * rr;
  y = y + r;
  y = y + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, 4);
  return y * two_n;
}

void AttnTileStepScalar(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                        float* l, float* acc);
// hd a multiple of 16, at most 256. The AVX2 level needs FMA besides (AttnAvx2Usable).
bool AttnAvx2Usable();
void AttnTileStepAvx2(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                      float* l, float* acc);
void AttnTileStepAvx512(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                        float* l, float* acc);

// n halves (IEEE binary16) to floats, exactly.
void AttnHalfToFloatAvx2(const uint16_t* src, int64_t n, float* dst);
void AttnHalfToFloatAvx512(const uint16_t* src, int64_t n, float* dst);

}  // namespace kvf::engine
