// IEEE half <-> float conversions, inline so that the dequantization and unpacking loops can vectorise
// them (Maratyszcza's FP16 methods, as ggml's ggml_compute_fp16_to_fp32 / ggml_compute_fp32_to_fp16:
// exact, branch-free, no tables or F16C, so the result does not depend on the target).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvf::engine::half {

inline uint16_t Load16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint32_t FloatToBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float normalized = BitsToFloat((two_w >> 4) + exp_offset) * 0x1.0p-112f;
  const uint32_t magic_mask = 126u << 23;
  const float denormalized = BitsToFloat((two_w >> 17) | magic_mask) - 0.5f;
  const uint32_t denormalized_cutoff = 1u << 27;
  // A mask rather than ?: so that GCC if-converts it and vectorises loops over this function.
  const uint32_t use_denormalized = 0u - static_cast<uint32_t>(two_w < denormalized_cutoff);
  const uint32_t bits = (FloatToBits(denormalized) & use_denormalized) | (FloatToBits(normalized) & ~use_denormalized);
  return BitsToFloat(sign | bits);
}

// Round to nearest even, overflow to inf, NaN stays NaN.
inline uint16_t FloatToHalf(float f) {
  const float scale_to_inf = 0x1.0p+112f;
  const float scale_to_zero = 0x1.0p-110f;
  const uint32_t w = FloatToBits(f);
  float base = std::fabs(f) * scale_to_inf * scale_to_zero;
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = BitsToFloat((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = FloatToBits(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

}  // namespace kvf::engine::half
