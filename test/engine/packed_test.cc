// Packed matrices (packed.h):
//   - every kernel this CPU runs (plain C, AVX2, AVX-512 VNNI, AMX) gives, bit for bit, the arithmetic packed.h
//     specifies, transcribed here from the ggml blocks themselves (not from the packed layout);
//   - at any number of rows (panels cut short), tokens (AMX tiles of 16 and the rest) and block counts;
//   - a (row, token) result does not depend on which panels or which other tokens are computed with it;
//   - weights at the ends of their ranges (Q8_0 -128 and 127, nibbles 0 and 15, zero and subnormal scales);
//   - the result is close to the float dot of the dequantized row with the unquantized activations;
//   - the AMX kernel leaves the thread's tile configuration as it found it (another library may own it).
#include <gtest/gtest.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/dequant.h"
#include "engine/packed.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::SupportedIsas;
using testing::ThrownCode;

struct Format {
  GgmlType type;
  int64_t bytes;  // per ggml block of 32
  int64_t quants;
  bool min;
};

const Format kFormats[] = {
    {GgmlType::Q8_0, 34, 2, false},
    {GgmlType::Q4_0, 18, 2, false},
    {GgmlType::Q4_1, 20, 4, true},
};

std::vector<uint8_t> RandomMatrix(std::mt19937& rng, const Format& f, int64_t rows, int64_t n_blocks) {
  std::vector<uint8_t> raw(static_cast<size_t>(rows * n_blocks * f.bytes));
  for (auto& b : raw) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  for (int64_t i = 0; i < rows * n_blocks; ++i) {
    uint8_t* blk = raw.data() + i * f.bytes;
    for (int64_t off = 0; off < (f.min ? 4 : 2); off += 2) {
      uint16_t h = i % 9 == 4 ? 0 : Fp32ToFp16(u(rng));
      if (i % 7 == 3) h &= 0x83FF;  // subnormal
      std::memcpy(blk + off, &h, 2);
    }
    if (i % 5 == 2) std::memset(blk + f.quants, i % 2 ? 0xFF : 0x00, static_cast<size_t>(f.bytes - f.quants));
    if (i % 11 == 6 && f.type == GgmlType::Q8_0) std::memset(blk + f.quants, 0x80, 32);  // -128
  }
  return raw;
}

// packed.h's arithmetic, from the ggml block of row `row`.
float Spec(const Format& f, const uint8_t* raw, int64_t n_blocks, int64_t row, const QuantizedActivations& x,
           int64_t t) {
  float acc = 0, summ = 0;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = raw + (row * n_blocks + b) * f.bytes;
    const int64_t tb = t * n_blocks + b;
    int32_t s = 0;
    for (int e = 0; e < 32; ++e) {
      int32_t w;
      if (f.type == GgmlType::Q8_0)
        w = static_cast<int8_t>(blk[f.quants + e]);
      else
        w = e < 16 ? (blk[f.quants + e] & 0x0F) : (blk[f.quants + e - 16] >> 4);
      if (f.type == GgmlType::Q4_0) w -= 8;
      s += w * x.q[static_cast<size_t>(tb * 32 + e)];
    }
    uint16_t h;
    std::memcpy(&h, blk, 2);
    acc = acc + (Fp16ToFp32(h) * x.d[static_cast<size_t>(tb)]) * static_cast<float>(s);
    if (f.min) {
      std::memcpy(&h, blk + 2, 2);
      summ = summ + Fp16ToFp32(h) * x.s[static_cast<size_t>(tb)];
    }
  }
  return f.min ? acc + summ : acc;
}

QuantizedActivations Activations(std::mt19937& rng, int64_t tokens, int64_t k) {
  std::uniform_real_distribution<float> u(-3, 3);
  std::vector<float> v(static_cast<size_t>(tokens * k));
  for (auto& e : v) e = u(rng);
  for (int64_t i = 0; i < 32 && i < tokens * k; ++i) v[static_cast<size_t>(i)] = 0;  // an all-zero block
  QuantizedActivations x;
  x.Resize(tokens, k);
  x.Quantize(v.data(), 0, tokens);
  return x;
}

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

TEST(Packed, EveryKernelGivesTheSpecifiedBits) {
  std::mt19937 rng(7);
  std::printf("[ INFO ] packed kernels run here: ");
  for (QdotIsa isa : SupportedIsas()) std::printf("%s ", QdotIsaName(isa));
  std::printf("\n");
  for (const Format& f : kFormats) {
    for (int64_t rows : {1, 15, 16, 17, 50}) {
      for (int64_t nb : {1, 3, 18}) {
        const std::vector<uint8_t> raw = RandomMatrix(rng, f, rows, nb);
        const PackedMatrix m = PackMatrix(f.type, raw.data(), rows, nb * 32, static_cast<uint64_t>(nb * f.bytes));
        for (int64_t tokens : {1, 3, 4, 5, 16, 17, 32, 35}) {
          const QuantizedActivations x = Activations(rng, tokens, nb * 32);
          for (QdotIsa isa : SupportedIsas()) {
            std::vector<float> y(static_cast<size_t>(tokens * rows), NAN);
            PackedScratch scratch;
            PackedDots(m, 0, m.n_panels, x, y.data(), rows, isa, scratch);
            for (int64_t t = 0; t < tokens; ++t)
              for (int64_t r = 0; r < rows; ++r)
                ASSERT_EQ(Bits(y[static_cast<size_t>(t * rows + r)]), Bits(Spec(f, raw.data(), nb, r, x, t)))
                    << TypeName(f.type) << " " << QdotIsaName(isa) << " rows " << rows << " blocks " << nb << " tokens "
                    << tokens << " at row " << r << " token " << t;
          }
        }
      }
    }
  }
}

TEST(Packed, ARowsResultDoesNotDependOnItsCompany) {
  std::mt19937 rng(11);
  const Format& f = kFormats[2];
  const int64_t rows = 40, nb = 4, tokens = 21;
  const std::vector<uint8_t> raw = RandomMatrix(rng, f, rows, nb);
  const PackedMatrix m = PackMatrix(f.type, raw.data(), rows, nb * 32, static_cast<uint64_t>(nb * f.bytes));
  const QuantizedActivations x = Activations(rng, tokens, nb * 32);
  for (QdotIsa isa : SupportedIsas()) {
    PackedScratch scratch;
    std::vector<float> all(static_cast<size_t>(tokens * rows));
    PackedDots(m, 0, m.n_panels, x, all.data(), rows, isa, scratch);
    // Panel by panel, and token by token (each token alone in its own activation batch).
    for (int64_t g = 0; g < m.n_panels; ++g) {
      std::vector<float> part(static_cast<size_t>(tokens * rows), NAN);
      PackedDots(m, g, g + 1, x, part.data(), rows, isa, scratch);
      for (int64_t t = 0; t < tokens; ++t)
        for (int64_t r = g * kPanelRows; r < std::min(rows, (g + 1) * kPanelRows); ++r)
          ASSERT_EQ(Bits(part[static_cast<size_t>(t * rows + r)]), Bits(all[static_cast<size_t>(t * rows + r)]));
    }
    for (int64_t t = 0; t < tokens; ++t) {
      QuantizedActivations one;
      one.Resize(1, nb * 32);
      std::memcpy(one.q.data(), x.q.data() + t * nb * 32, static_cast<size_t>(nb * 32));
      for (int64_t b = 0; b < nb; ++b) {
        const size_t i = static_cast<size_t>(t * nb + b), o = static_cast<size_t>(b);
        one.d[o] = x.d[i], one.s[o] = x.s[i], one.sum[o] = x.sum[i];
      }
      std::vector<float> y(static_cast<size_t>(rows));
      PackedDots(m, 0, m.n_panels, one, y.data(), rows, isa, scratch);
      for (int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(Bits(y[static_cast<size_t>(r)]), Bits(all[static_cast<size_t>(t * rows + r)])) << QdotIsaName(isa);
    }
  }
}

TEST(Packed, CloseToTheFloatDot) {
  std::mt19937 rng(3);
  for (const Format& f : kFormats) {
    const int64_t rows = 20, nb = 6, k = nb * 32;
    const std::vector<uint8_t> raw = RandomMatrix(rng, f, rows, nb);
    const PackedMatrix m = PackMatrix(f.type, raw.data(), rows, k, static_cast<uint64_t>(nb * f.bytes));
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> v(static_cast<size_t>(k));
    for (auto& e : v) e = u(rng);
    QuantizedActivations x;
    x.Resize(1, k);
    x.Quantize(v.data(), 0, 1);
    std::vector<float> y(static_cast<size_t>(rows)), w(static_cast<size_t>(k));
    PackedScratch scratch;
    PackedDots(m, 0, m.n_panels, x, y.data(), rows, BestQdotIsa(), scratch);
    for (int64_t r = 0; r < rows; ++r) {
      DequantizeRow(f.type, raw.data() + r * nb * f.bytes, w.data(), k);
      double want = 0, scale = 0;
      for (int64_t i = 0; i < k; ++i) {
        want += static_cast<double>(w[static_cast<size_t>(i)]) * v[static_cast<size_t>(i)];
        scale += std::fabs(static_cast<double>(w[static_cast<size_t>(i)]) * v[static_cast<size_t>(i)]);
      }
      EXPECT_NEAR(y[static_cast<size_t>(r)], want, 0.02 * scale + 1e-6) << TypeName(f.type) << " row " << r;
    }
  }
}

TEST(Packed, RefusesWhatItCannotPack) {
  const std::vector<uint8_t> raw(1024);
  EXPECT_EQ(ThrownCode([&] { PackMatrix(GgmlType::Q6_K, raw.data(), 1, 256, 210); }),
            "KVF_ERR_UNSUPPORTED_TENSOR_TYPE");
  EXPECT_EQ(ThrownCode([&] { PackMatrix(GgmlType::Q4_1, raw.data(), 1, 48, 40); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { PackMatrix(GgmlType::Q4_1, raw.data(), 1, 64, 20); }), "KVF_ERR_INVALID_ARGUMENT");
  const PackedMatrix m = PackMatrix(GgmlType::Q4_1, raw.data(), 1, 64, 40);
  QuantizedActivations x;
  x.Resize(1, 32);
  std::vector<float> y(1);
  PackedScratch scratch;
  EXPECT_EQ(ThrownCode([&] { PackedDots(m, 0, 1, x, y.data(), 1, QdotIsa::kScalar, scratch); }),
            "KVF_ERR_INVALID_ARGUMENT");
}

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("amx-tile")
struct alignas(64) Config {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

TEST(Packed, AmxKernelPutsBackTheThreadsTileConfiguration) {
  if (!QdotIsaSupported(QdotIsa::kAmx)) GTEST_SKIP() << "no AMX here";
  std::mt19937 rng(5);
  const Format& f = kFormats[2];
  const std::vector<uint8_t> raw = RandomMatrix(rng, f, 16, 2);
  const PackedMatrix m = PackMatrix(f.type, raw.data(), 16, 64, 40);
  const QuantizedActivations x = Activations(rng, 32, 64);  // AMX takes 32 rows and more
  std::vector<float> y(32 * 16);
  PackedScratch scratch;
  Config theirs{};
  theirs.palette = 1;
  theirs.rows[7] = 3, theirs.colsb[7] = 12;  // a shape the kernel never uses
  _tile_loadconfig(&theirs);
  PackedDots(m, 0, 1, x, y.data(), 16, QdotIsa::kAmx, scratch);
  Config after{};
  _tile_storeconfig(&after);
  EXPECT_EQ(std::memcmp(&after, &theirs, sizeof(Config)), 0);
  _tile_release();
  PackedDots(m, 0, 1, x, y.data(), 16, QdotIsa::kAmx, scratch);
  _tile_storeconfig(&after);
  EXPECT_EQ(after.palette, 0) << "a thread without a configuration is left without one";
}
#pragma GCC pop_options
#endif

}  // namespace
}  // namespace kvf::engine
