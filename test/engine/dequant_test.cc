// Dequantization: half/bfloat conversions exhaustively; each block type against a plain transcription
// of ggml's reference dequantize_row_* (ggml-quants.c) on random blocks, plus hand-worked blocks;
// dot products against a double-precision sum. The crosscheck against gguf-py lives in
// benchmarks/crosscheck (it needs Python).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/dequant.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::ThrownCode;

// Independent half decoder: the textbook formula.
float RefHalf(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1F, m = h & 0x3FF;
  float v;
  if (e == 0) v = std::ldexp(static_cast<float>(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(static_cast<float>(m + 1024), e - 25);
  return s ? -v : v;
}

bool SameFloat(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

TEST(Half, AllValues) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = Fp16ToFp32(static_cast<uint16_t>(h));
    ASSERT_TRUE(SameFloat(f, RefHalf(static_cast<uint16_t>(h)))) << std::hex << h;
    if (!std::isnan(f)) {
      ASSERT_EQ(Fp32ToFp16(f), h) << std::hex << h;
    }
  }
  // Round to nearest, ties to even; overflow to infinity; underflow to (signed) zero.
  EXPECT_EQ(Fp32ToFp16(1.0f + 1.0f / 2048), 0x3C00);               // tie, even stays
  EXPECT_EQ(Fp32ToFp16(1.0f + 3.0f / 2048), 0x3C02);               // tie, rounds up to even
  EXPECT_EQ(Fp32ToFp16(1.0f + 1.0f / 2048 + 1.0f / 65536), 0x3C01);
  EXPECT_EQ(Fp32ToFp16(70000.0f), 0x7C00);
  EXPECT_EQ(Fp32ToFp16(-1e-10f), 0x8000);
  EXPECT_EQ(Fp32ToFp16(std::ldexp(1.0f, -24)), 0x0001);           // smallest subnormal
}

// An F16 row holding every half value: the row converter (F16C where the CPU has it) agrees with the
// textbook decoder, including subnormals, infinities and NaNs.
TEST(Half, RowOfAllValues) {
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = static_cast<uint16_t>(h);
  std::vector<float> got(all.size());
  DequantizeRow(GgmlType::F16, all.data(), got.data(), static_cast<int64_t>(all.size()));
  for (uint32_t h = 0; h < 65536; ++h) ASSERT_TRUE(SameFloat(got[h], RefHalf(static_cast<uint16_t>(h)))) << std::hex << h;
  DequantizeRow(GgmlType::F16, all.data() + 1, got.data(), 13);  // a tail shorter than one vector
  for (uint32_t h = 1; h < 14; ++h) ASSERT_TRUE(SameFloat(got[h - 1], RefHalf(static_cast<uint16_t>(h)))) << h;
}

TEST(Bf16, Values) {
  EXPECT_EQ(Bf16ToFp32(0x3F80), 1.0f);
  EXPECT_EQ(Bf16ToFp32(0xC040), -3.0f);
  EXPECT_EQ(Bf16ToFp32(0x0000), 0.0f);
  EXPECT_TRUE(std::isinf(Bf16ToFp32(0x7F80)));
  uint8_t row[4] = {0x80, 0x3F, 0x40, 0xC0};
  float out[2];
  DequantizeRow(GgmlType::BF16, row, out, 2);
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_EQ(out[1], -3.0f);
}

// ---------------------------------------------------------------------------------------------------------
// ggml's reference implementations, transcribed with structs as ggml declares them.

struct block_q8_0 { uint16_t d; int8_t qs[32]; };
struct block_q4_0 { uint16_t d; uint8_t qs[16]; };
struct block_q4_1 { uint16_t d; uint16_t m; uint8_t qs[16]; };
struct block_q4_K { uint16_t d; uint16_t dmin; uint8_t scales[12]; uint8_t qs[128]; };
struct block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; };
static_assert(sizeof(block_q8_0) == 34 && sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 &&
                  sizeof(block_q4_K) == 144 && sizeof(block_q6_K) == 210,
              "ggml block layouts");

template <typename B>
std::vector<B> Blocks(const std::vector<uint8_t>& raw) {
  std::vector<B> v(raw.size() / sizeof(B));
  std::memcpy(v.data(), raw.data(), v.size() * sizeof(B));
  return v;
}

void RefQ8_0(const std::vector<uint8_t>& raw, float* y) {
  for (const auto& b : Blocks<block_q8_0>(raw)) {
    const float d = RefHalf(b.d);
    for (int j = 0; j < 32; ++j) *y++ = b.qs[j] * d;
  }
}

void RefQ4_0(const std::vector<uint8_t>& raw, float* y) {
  for (const auto& b : Blocks<block_q4_0>(raw)) {
    const float d = RefHalf(b.d);
    for (int j = 0; j < 16; ++j) {
      y[j] = ((b.qs[j] & 0x0F) - 8) * d;
      y[j + 16] = ((b.qs[j] >> 4) - 8) * d;
    }
    y += 32;
  }
}

void RefQ4_1(const std::vector<uint8_t>& raw, float* y) {
  for (const auto& b : Blocks<block_q4_1>(raw)) {
    const float d = RefHalf(b.d), m = RefHalf(b.m);
    for (int j = 0; j < 16; ++j) {
      const float x0 = (b.qs[j] & 0x0F) * d;
      const float x1 = (b.qs[j] >> 4) * d;
      y[j] = x0 + m;
      y[j + 16] = x1 + m;
    }
    y += 32;
  }
}

void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
  }
}

void RefQ4_K(const std::vector<uint8_t>& raw, float* y) {
  for (const auto& b : Blocks<block_q4_K>(raw)) {
    const uint8_t* q = b.qs;
    const float d = RefHalf(b.d), min = RefHalf(b.dmin);
    int is = 0;
    uint8_t sc, m;
    for (int j = 0; j < 256; j += 64) {
      get_scale_min_k4(is + 0, b.scales, &sc, &m);
      const float d1 = d * sc, m1 = min * m;
      get_scale_min_k4(is + 1, b.scales, &sc, &m);
      const float d2 = d * sc, m2 = min * m;
      for (int l = 0; l < 32; ++l) {
        const float t = d1 * (q[l] & 0xF);
        *y++ = t - m1;
      }
      for (int l = 0; l < 32; ++l) {
        const float t = d2 * (q[l] >> 4);
        *y++ = t - m2;
      }
      q += 32;
      is += 2;
    }
  }
}

void RefQ6_K(const std::vector<uint8_t>& raw, float* y) {
  for (const auto& b : Blocks<block_q6_K>(raw)) {
    const float d = RefHalf(b.d);
    const uint8_t* ql = b.ql;
    const uint8_t* qh = b.qh;
    const int8_t* sc = b.scales;
    for (int n = 0; n < 256; n += 128) {
      for (int l = 0; l < 32; ++l) {
        int is = l / 16;
        const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const float s1 = d * sc[is + 0], s2 = d * sc[is + 2], s3 = d * sc[is + 4], s4 = d * sc[is + 6];
        y[l + 0] = s1 * q1;
        y[l + 32] = s2 * q2;
        y[l + 64] = s3 * q3;
        y[l + 96] = s4 * q4;
      }
      y += 128;
      ql += 64;
      qh += 32;
      sc += 8;
    }
  }
}

// Random blocks whose half-precision fields (at the given byte offsets of each block) are finite,
// including subnormals and zeros.
std::vector<uint8_t> RandomBlocks(std::mt19937& rng, size_t n_blocks, size_t block_bytes, std::vector<size_t> half_at) {
  std::vector<uint8_t> raw(n_blocks * block_bytes);
  for (auto& b : raw) b = static_cast<uint8_t>(rng());
  for (size_t i = 0; i < n_blocks; ++i) {
    for (size_t off : half_at) {
      uint16_t h = static_cast<uint16_t>(rng());
      if (((h >> 10) & 0x1F) == 0x1F) h &= 0xBFFF;  // no inf / NaN
      if (i % 7 == 3) h &= 0x83FF;                  // subnormal
      if (i % 11 == 5) h = 0;
      std::memcpy(&raw[i * block_bytes + off], &h, 2);
    }
  }
  return raw;
}

struct Case {
  GgmlType type;
  int64_t qk;
  size_t bytes;
  std::vector<size_t> half_at;
  void (*ref)(const std::vector<uint8_t>&, float*);
};

class BlockTypes : public ::testing::TestWithParam<Case> {};

TEST_P(BlockTypes, MatchesGgmlReferenceBitForBit) {
  const Case& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.type) * 101);
  for (int64_t n_blocks : {1, 2, 7}) {
    auto raw = RandomBlocks(rng, static_cast<size_t>(n_blocks), c.bytes, c.half_at);
    const int64_t n = n_blocks * c.qk;
    std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
    DequantizeRow(c.type, raw.data(), got.data(), n);
    c.ref(raw, want.data());
    for (int64_t i = 0; i < n; ++i) ASSERT_TRUE(SameFloat(got[i], want[i])) << i << ": " << got[i] << " vs " << want[i];
  }
}

TEST_P(BlockTypes, DotMatchesDequantizedSum) {
  const Case& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.type) * 7 + 1);
  std::uniform_real_distribution<float> u(-1, 1);
  const int64_t n_blocks = 5;
  const int64_t n = n_blocks * c.qk;
  auto raw = RandomBlocks(rng, static_cast<size_t>(n_blocks), c.bytes, c.half_at);
  std::vector<float> a(static_cast<size_t>(n)), x(static_cast<size_t>(n));
  for (auto& v : x) v = u(rng);
  DequantizeRow(c.type, raw.data(), a.data(), n);
  double want = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    want += static_cast<double>(a[i]) * x[i];
    scale += std::fabs(static_cast<double>(a[i]) * x[i]);
  }
  const float got = DotRow(c.type, raw.data(), x.data(), n);
  EXPECT_NEAR(got, want, 1e-6 * scale + 1e-30);
}

INSTANTIATE_TEST_SUITE_P(Dequant, BlockTypes,
                         ::testing::Values(Case{GgmlType::Q8_0, 32, 34, {0}, RefQ8_0},
                                           Case{GgmlType::Q4_0, 32, 18, {0}, RefQ4_0},
                                           Case{GgmlType::Q4_1, 32, 20, {0, 2}, RefQ4_1},
                                           Case{GgmlType::Q4_K, 256, 144, {0, 2}, RefQ4_K},
                                           Case{GgmlType::Q6_K, 256, 210, {208}, RefQ6_K}),
                         [](const ::testing::TestParamInfo<Case>& i) { return TypeName(i.param.type); });

// Hand-worked blocks, so that the reference transcriptions above are not the only witness.
TEST(Dequant, HandWorkedQ4_0AndQ8_0) {
  uint8_t q4[18] = {};
  const uint16_t half_2 = 0x4000;  // 2.0
  std::memcpy(q4, &half_2, 2);
  q4[2] = 0xF0;  // element 0: 0 - 8 = -8; element 16: 15 - 8 = 7
  q4[3] = 0x19;  // element 1: 9 - 8 = 1;  element 17: 1 - 8 = -7
  float y[32];
  DequantizeRow(GgmlType::Q4_0, q4, y, 32);
  EXPECT_EQ(y[0], -16.0f);
  EXPECT_EQ(y[16], 14.0f);
  EXPECT_EQ(y[1], 2.0f);
  EXPECT_EQ(y[17], -14.0f);
  EXPECT_EQ(y[2], -16.0f);  // zero nibble

  uint8_t q8[34] = {};
  const uint16_t half_half = 0x3800;  // 0.5
  std::memcpy(q8, &half_half, 2);
  q8[2] = 0x80;  // -128
  q8[33] = 127;
  DequantizeRow(GgmlType::Q8_0, q8, y, 32);
  EXPECT_EQ(y[0], -64.0f);
  EXPECT_EQ(y[31], 63.5f);
  EXPECT_EQ(y[5], 0.0f);
}

TEST(Dequant, HandWorkedQ4_K) {
  block_q4_K b = {};
  b.d = 0x3C00;     // 1.0
  b.dmin = 0x3800;  // 0.5
  // Sub-block 1: scale 3, min 2 (low six bits of bytes 1 and 5).
  b.scales[1] = 3;
  b.scales[5] = 2;
  // Sub-block 6: scale = (scales[10] & 15) | (scales[2] >> 6) << 4 = 5 | 2 << 4 = 37;
  //              min   = (scales[10] >> 4) | (scales[6] >> 6) << 4 = 1 | 3 << 4 = 49.
  b.scales[10] = 0x15;
  b.scales[2] = 0x80;
  b.scales[6] = 0xC0;
  b.qs[0] = 0x70;   // element 0 (sub-block 0, low nibble 0), element 32 (sub-block 1, high nibble 7)
  b.qs[96] = 0x09;  // element 192 (sub-block 6, low nibble 9)
  float y[256];
  DequantizeRow(GgmlType::Q4_K, &b, y, 256);
  EXPECT_EQ(y[0], 0.0f);                 // scale 0, min 0
  EXPECT_EQ(y[32], 3.0f * 7 - 0.5f * 2); // 20
  EXPECT_EQ(y[192], 37.0f * 9 - 0.5f * 49);
  EXPECT_EQ(y[193], -0.5f * 49);
}

TEST(Dequant, HandWorkedQ6_K) {
  block_q6_K b = {};
  b.d = 0x4000;  // 2.0
  b.scales[0] = -3;
  b.scales[2] = 5;
  b.ql[0] = 0x0F;  // element 0: low 4 bits 15
  b.qh[0] = 0x02;  // element 0: high 2 bits 2 -> q = 15 | 32 = 47 - 32 = 15
  b.ql[32] = 0x01; // element 32: low 4 bits 1, high bits (qh[0] >> 2) & 3 = 0 -> q = 1 - 32 = -31
  float y[256];
  DequantizeRow(GgmlType::Q6_K, &b, y, 256);
  EXPECT_EQ(y[0], 2.0f * -3 * 15);
  EXPECT_EQ(y[32], 2.0f * 5 * -31);
  EXPECT_EQ(y[1], 2.0f * -3 * -32);
}

TEST(Dequant, F32AndF16Rows) {
  std::vector<float> src = {1.5f, -2.0f, 0.25f, 3.0f, 4.0f};
  std::vector<float> out(5);
  DequantizeRow(GgmlType::F32, src.data(), out.data(), 5);
  EXPECT_EQ(out, src);
  std::vector<uint16_t> h(src.size());
  for (size_t i = 0; i < src.size(); ++i) h[i] = Fp32ToFp16(src[i]);
  DequantizeRow(GgmlType::F16, h.data(), out.data(), 5);
  EXPECT_EQ(out, src);
  // Dots over lengths that are not multiples of the accumulator width, from unaligned F32 data.
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  for (int64_t n : {1, 15, 16, 17, 255, 256, 257, 1000}) {
    std::vector<float> a(static_cast<size_t>(n)), x(static_cast<size_t>(n));
    std::vector<uint16_t> ah(static_cast<size_t>(n)), ab(static_cast<size_t>(n));
    for (auto& v : a) v = u(rng);
    for (auto& v : x) v = u(rng);
    std::vector<uint8_t> unaligned(static_cast<size_t>(n) * 4 + 1);
    std::memcpy(unaligned.data() + 1, a.data(), static_cast<size_t>(n) * 4);
    double want = 0, want_h = 0, want_b = 0, scale = 0;
    for (int64_t i = 0; i < n; ++i) {
      ah[i] = Fp32ToFp16(a[i]);
      uint32_t bits;
      std::memcpy(&bits, &a[i], 4);
      ab[i] = static_cast<uint16_t>(bits >> 16);
      want += static_cast<double>(a[i]) * x[i];
      want_h += static_cast<double>(Fp16ToFp32(ah[i])) * x[i];
      want_b += static_cast<double>(Bf16ToFp32(ab[i])) * x[i];
      scale += std::fabs(static_cast<double>(a[i]) * x[i]);
    }
    EXPECT_NEAR(DotRow(GgmlType::F32, unaligned.data() + 1, x.data(), n), want, 1e-6 * scale) << n;
    EXPECT_NEAR(DotRow(GgmlType::F16, ah.data(), x.data(), n), want_h, 1e-6 * scale) << n;
    EXPECT_NEAR(DotRow(GgmlType::BF16, ab.data(), x.data(), n), want_b, 1e-6 * scale) << n;
  }
}

TEST(Dequant, Errors) {
  float y[64];
  uint8_t raw[256] = {};
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(GgmlType::Q8_0, raw, y, 31); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(GgmlType::Q4_K, raw, y, 64); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { DotRow(GgmlType::Q4_0, raw, y, -32); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(GgmlType::Q5_K, raw, y, 0); }), "KVF_ERR_UNSUPPORTED_TENSOR_TYPE");
  EXPECT_EQ(ThrownCode([&] { DotRow(GgmlType::I32, raw, y, 4); }), "KVF_ERR_UNSUPPORTED_TENSOR_TYPE");
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(static_cast<GgmlType>(99), raw, y, 1); }),
            "KVF_ERR_UNSUPPORTED_TENSOR_TYPE");
  EXPECT_TRUE(CanDequantize(GgmlType::BF16));
  EXPECT_FALSE(CanDequantize(GgmlType::Q5_0));
  EXPECT_EQ(ThrownCode([&] { DequantizeRow(GgmlType::F32, raw, y, 0); }), "");  // empty row is fine
}

}  // namespace
}  // namespace kvf::engine
