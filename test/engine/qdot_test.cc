// Quantized dots (qdot.h):
//   - activation quantization follows ggml's quantize_row_q8_1 (fp16-rounded d and s, |q| <= 127), with
//     the same result from every ISA's code;
//   - unpacked weights times their scales (plus min) are exactly DequantizeRow's floats, with every
//     unpacking code this CPU runs;
//   - every kernel this CPU runs (plain C, AVX2, AVX-512 VNNI) gives the same bits as the plain-C one,
//     which is checked against a transcription of the arithmetic that qdot.h specifies;
//   - a (row, token) result does not depend on the tile height or on the other tokens of the batch;
//   - the dot is close to the float dot of the dequantized row with the unquantized activations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/dequant.h"
#include "engine/qdot.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::SupportedIsas;
using testing::ThrownCode;

struct QCase {
  GgmlType type;
  int64_t qk;
  size_t bytes;
  std::vector<size_t> half_at;  // fp16 scale offsets within a block
};

std::vector<uint8_t> RandomRows(std::mt19937& rng, const QCase& c, int64_t n_blocks) {
  std::vector<uint8_t> raw(static_cast<size_t>(n_blocks) * c.bytes);
  for (auto& b : raw) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (int64_t i = 0; i < n_blocks; ++i)
    for (size_t off : c.half_at) {
      uint16_t h = i % 9 == 4 ? 0 : Fp32ToFp16(u(rng));
      if (i % 7 == 3) h &= 0x83FF;  // subnormal
      std::memcpy(&raw[static_cast<size_t>(i) * c.bytes + off], &h, 2);
    }
  return raw;
}

std::vector<float> RandomActivations(std::mt19937& rng, int64_t n) {
  std::uniform_real_distribution<float> u(-3, 3);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = u(rng);
  for (int64_t i = 0; i < n && i < 32; ++i) x[static_cast<size_t>(i)] = 0;  // an all-zero block
  return x;
}

// qdot.h's specification, written out independently of the kernels.
float SpecDot(const UnpackedRows& w, int r, const QuantizedActivations& x, int64_t t) {
  float acc[8] = {};
  float summ = 0;
  for (int64_t b = 0; b < w.n_blocks; ++b) {
    const int64_t rb = r * w.n_blocks + b, tb = t * x.n_blocks + b;
    for (int l = 0; l < 8; ++l) {
      int32_t L = 0;
      for (int j = 4 * l; j < 4 * l + 4; ++j) L += w.q[static_cast<size_t>(rb * 32 + j)] * x.q[static_cast<size_t>(tb * 32 + j)];
      acc[l] = acc[l] + (w.scale[static_cast<size_t>(rb * 8 + l)] * x.d[static_cast<size_t>(tb)]) * static_cast<float>(L);
    }
    if (w.with_min) summ = summ + w.min[static_cast<size_t>(rb)] * x.s[static_cast<size_t>(tb)];
  }
  return (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) + summ;
}

class QDot : public ::testing::TestWithParam<QCase> {};

TEST_P(QDot, UnpackedRowsAreTheDequantizedValues) {
  const QCase& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.type) + 11);
  const int64_t k = 2 * 256, row_blocks = k / c.qk;
  const auto raw = RandomRows(rng, c, 3 * row_blocks);
  for (QdotIsa isa : SupportedIsas()) {
    SCOPED_TRACE(QdotIsaName(isa));
    UnpackedRows w;
    w.Unpack(c.type, raw.data(), static_cast<uint64_t>(row_blocks) * c.bytes, 3, k, isa);
    for (int r = 0; r < 3; ++r) {
      std::vector<float> want(static_cast<size_t>(k));
      DequantizeRow(c.type, raw.data() + static_cast<size_t>(r * row_blocks) * c.bytes, want.data(), k);
      for (int64_t e = 0; e < k; ++e) {
        const int64_t blk = r * w.n_blocks + e / 32, lane = (e % 32) / 4;
        float got = w.scale[static_cast<size_t>(blk * 8 + lane)] * static_cast<float>(w.q[static_cast<size_t>(r * k + e)]);
        if (w.with_min) got = got + w.min[static_cast<size_t>(blk)];
        ASSERT_EQ(got, want[static_cast<size_t>(e)]) << "row " << r << " element " << e;
      }
    }
  }
}

TEST_P(QDot, KernelsAgreeBitForBitAndWithTheFloatDot) {
  const QCase& c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.type) * 31 + 7);
  const int64_t k = 3 * 256, row_blocks = k / c.qk, n_tokens = 5;
  const uint64_t row_bytes = static_cast<uint64_t>(row_blocks) * c.bytes;
  const auto raw = RandomRows(rng, c, kQTileRows * row_blocks);
  const auto xf = RandomActivations(rng, n_tokens * k);
  QuantizedActivations x;
  x.Resize(n_tokens, k);
  x.Quantize(xf.data(), 0, n_tokens);
  UnpackedRows w;
  w.Unpack(c.type, raw.data(), row_bytes, kQTileRows, k);

  std::vector<float> spec(static_cast<size_t>(n_tokens * kQTileRows));
  for (int64_t t = 0; t < n_tokens; ++t)
    for (int r = 0; r < kQTileRows; ++r) spec[static_cast<size_t>(t * kQTileRows + r)] = SpecDot(w, r, x, t);

  for (QdotIsa isa : SupportedIsas()) {
    SCOPED_TRACE(QdotIsaName(isa));
    std::vector<float> y(spec.size());
    QuantizedTileDots(w, x, y.data(), kQTileRows, isa);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(std::memcmp(&y[i], &spec[i], 4), 0) << i << ": " << y[i] << " vs " << spec[i];

    // One row at a time and one token at a time: the same bits.
    for (int r = 0; r < kQTileRows; ++r) {
      UnpackedRows one;
      one.Unpack(c.type, raw.data() + r * row_bytes, row_bytes, 1, k);
      for (int64_t t = 0; t < n_tokens; ++t) {
        QuantizedActivations xt;
        xt.Resize(1, k);
        xt.Quantize(xf.data() + t * k, 0, 1);
        float y1 = 0;
        QuantizedTileDots(one, xt, &y1, 1, isa);
        ASSERT_EQ(std::memcmp(&y1, &spec[static_cast<size_t>(t * kQTileRows + r)], 4), 0) << r << "," << t;
      }
    }
  }

  // Against the float dot: within the activation quantization error (|x| / 127 / 2 per element).
  for (int r = 0; r < kQTileRows; ++r) {
    std::vector<float> a(static_cast<size_t>(k));
    DequantizeRow(c.type, raw.data() + r * row_bytes, a.data(), k);
    for (int64_t t = 0; t < n_tokens; ++t) {
      double want = 0, bound = 0;
      for (int64_t i = 0; i < k; ++i) {
        want += static_cast<double>(a[static_cast<size_t>(i)]) * xf[static_cast<size_t>(t * k + i)];
        bound += std::fabs(static_cast<double>(a[static_cast<size_t>(i)])) * 3.0 / 127.0;
      }
      EXPECT_NEAR(spec[static_cast<size_t>(t * kQTileRows + r)], want, bound + 1e-6) << r << "," << t;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, QDot,
                         ::testing::Values(QCase{GgmlType::Q8_0, 32, 34, {0}}, QCase{GgmlType::Q4_0, 32, 18, {0}},
                                           QCase{GgmlType::Q4_1, 32, 20, {0, 2}},
                                           QCase{GgmlType::Q4_K, 256, 144, {0, 2}},
                                           QCase{GgmlType::Q6_K, 256, 210, {208}}),
                         [](const ::testing::TestParamInfo<QCase>& i) { return TypeName(i.param.type); });

TEST(QuantizeActivations, FollowsGgmlQ8_1) {
  std::vector<float> x(64);
  for (int i = 0; i < 32; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i - 16) * 0.25f;  // amax 4
  x[40] = 1e30f;  // second block: one huge value, the rest round to 0
  x[41] = -INFINITY;
  QuantizedActivations q;
  q.Resize(1, 64);
  q.Quantize(x.data(), 0, 1);
  const float d = 4.0f / 127.0f;
  EXPECT_EQ(q.d[0], Fp16ToFp32(Fp32ToFp16(d)));
  int sum = 0;
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(q.q[static_cast<size_t>(i)], static_cast<int8_t>(std::nearbyint(x[static_cast<size_t>(i)] * (1.0f / d)))) << i;
    sum += q.q[static_cast<size_t>(i)];
  }
  EXPECT_EQ(q.q[0], -127);
  EXPECT_EQ(q.s[0], Fp16ToFp32(Fp32ToFp16(static_cast<float>(sum) * d)));
  for (int i = 32; i < 64; ++i) EXPECT_LE(std::abs(q.q[static_cast<size_t>(i)]), 127) << i;
}

// Every quantization code this CPU runs gives the same q, d and s, on random blocks and on edge cases: ties
// (amax 127 makes d 1, so x.5 values are exact ties), zeros, subnormals, huge values, infinities, NaNs.
TEST(QuantizeActivations, SameOnEveryIsa) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-4, 4);
  const int64_t k = 32 * 12;
  std::vector<float> x(static_cast<size_t>(3 * k));
  for (auto& v : x) v = u(rng);
  for (int j = 0; j < 32; ++j) x[static_cast<size_t>(j)] = static_cast<float>(j - 16) + 0.5f;  // ties
  x[31] = 127.0f;
  for (int j = 32; j < 64; ++j) x[static_cast<size_t>(j)] = 0.0f;
  for (int j = 64; j < 96; ++j) x[static_cast<size_t>(j)] = std::ldexp(static_cast<float>(j - 80), -140);  // subnormal
  x[100] = 3e38f;
  x[130] = INFINITY;
  x[131] = -INFINITY;
  x[160] = NAN;
  x[200] = 70000.0f * 127.0f;  // d beyond fp16: inf
  x[230] = -1e-30f;
  QuantizedActivations want;
  want.Resize(3, k);
  want.Quantize(x.data(), 0, 3, QdotIsa::kScalar);
  for (QdotIsa isa : SupportedIsas()) {
    SCOPED_TRACE(QdotIsaName(isa));
    QuantizedActivations got;
    got.Resize(3, k);
    got.Quantize(x.data(), 0, 1, isa);
    got.Quantize(x.data(), 1, 3, isa);
    EXPECT_EQ(got.q, want.q);
    ASSERT_EQ(got.d.size(), want.d.size());
    for (size_t i = 0; i < got.d.size(); ++i) {
      EXPECT_EQ(std::memcmp(&got.d[i], &want.d[i], 4), 0) << i << ": " << got.d[i] << " vs " << want.d[i];
      EXPECT_EQ(std::memcmp(&got.s[i], &want.s[i], 4), 0) << i << ": " << got.s[i] << " vs " << want.s[i];
    }
  }
  for (int8_t v : want.q) ASSERT_GE(v, -127);
}

TEST(QuantizeActivations, Errors) {
  QuantizedActivations q;
  EXPECT_EQ(ThrownCode([&] { q.Resize(1, 48); }), "KVF_ERR_INVALID_ARGUMENT");
  UnpackedRows w;
  uint8_t raw[256] = {};
  EXPECT_EQ(ThrownCode([&] { w.Unpack(GgmlType::F16, raw, 64, 1, 32); }), "KVF_ERR_UNSUPPORTED_TENSOR_TYPE");
  EXPECT_EQ(ThrownCode([&] { w.Unpack(GgmlType::Q4_K, raw, 144, 1, 32); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { w.Unpack(GgmlType::Q8_0, raw, 34, kQTileRows + 1, 32); }), "KVF_ERR_INVALID_ARGUMENT");
}

}  // namespace
}  // namespace kvf::engine
