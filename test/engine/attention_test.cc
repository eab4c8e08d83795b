// PagedAttention (attention.h) on random K/V in a paged pool:
//   - close to a double-precision softmax-attention reference (so the tiling, the online softmax and the
//     chunk merge are right), for several head sizes, GQA groups, block sizes and both KV dtypes;
//   - the same bits for every ISA kernel, every thread count, and whether the queries come as one batch, in
//     chunks or one by one (decode), across several tiles and chunks (the split and unsplit item paths);
//   - ExpNeg close to std::exp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "engine/attention.h"
#include "engine/attention_kernels.h"
#include "engine/half.h"

namespace kvf::engine {
namespace {

struct Case {
  int n_head, n_kv, hd, tpb;
  KvDtype dtype;
  int64_t positions;
};

class Fixture {
 public:
  explicit Fixture(const Case& c) : c_(c) {
    layout_.num_layers = 2;
    layout_.num_kv_heads = c.n_kv;
    layout_.head_dim = c.hd;
    layout_.tokens_per_block = c.tpb;
    layout_.dtype = c.dtype;
    const int64_t blocks = layout_.BlocksFor(c.positions) + 3;
    mem_.assign(static_cast<size_t>(blocks) * layout_.block_bytes(), 0);
    pool_ = std::make_unique<KvPool>(layout_, mem_.data(), mem_.size());
    // Blocks in a scrambled order, so that a wrong table lookup shows.
    std::vector<int32_t> ids(static_cast<size_t>(blocks));
    for (int32_t i = 0; i < blocks; ++i) ids[static_cast<size_t>(i)] = i;
    std::mt19937 rng(7);
    std::shuffle(ids.begin(), ids.end(), rng);
    table_.assign(ids.begin(), ids.begin() + layout_.BlocksFor(c.positions));
    pool_->Claim(table_);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    kv_.resize(static_cast<size_t>(2 * c.positions * c.n_kv * c.hd));
    for (int64_t p = 0; p < c.positions; ++p)
      for (int kv = 0; kv < 2; ++kv)
        for (int h = 0; h < c.n_kv; ++h)
          for (int i = 0; i < c.hd; ++i) {
            // Larger K values make peaked softmaxes, so that the running max moves between tiles.
            float x = nd(rng) * (kv == 0 ? 2.0f : 1.0f);
            const int64_t elem = (static_cast<int64_t>(h) * c.tpb + p % c.tpb) * c.hd + i;
            uint8_t* sec = pool_->Section(table_[static_cast<size_t>(p / c.tpb)], 1, kv);
            if (c.dtype == KvDtype::F16) {
              const uint16_t hb = half::FloatToHalf(x);
              std::memcpy(sec + elem * 2, &hb, 2);
              x = half::HalfToFloat(hb);
            } else {
              std::memcpy(sec + elem * 4, &x, 4);
            }
            kv_[static_cast<size_t>(((kv * c.positions + p) * c.n_kv + h) * c.hd + i)] = x;
          }
    q_.resize(static_cast<size_t>(c.positions * c.n_head * c.hd));
    for (float& x : q_) x = nd(rng);
  }

  // Output rows of queries [start, start + n), computed in one call.
  std::vector<float> Run(int64_t start, int64_t n, int threads, QdotIsa isa) {
    ThreadPool tp(threads);
    AttentionScratch scratch;
    const int64_t q_dim = static_cast<int64_t>(c_.n_head) * c_.hd;
    std::vector<float> out(static_cast<size_t>(n * q_dim));
    AttentionArgs a;
    a.pool = pool_.get();
    a.layer = 1;
    a.table = &table_;
    a.n_head = c_.n_head;
    a.start = start;
    a.n = n;
    a.q = q_.data() + start * q_dim;
    a.out = out.data();
    a.scale = 1.0f / std::sqrt(static_cast<float>(c_.hd));
    a.isa = isa;
    PagedAttention(&a, 1, tp, scratch);
    return out;
  }

  // Queries [0, positions) as calls of the given sizes, in order.
  std::vector<float> RunPieces(const std::vector<int64_t>& sizes, int threads, QdotIsa isa) {
    std::vector<float> all;
    int64_t start = 0;
    for (int64_t n : sizes) {
      std::vector<float> o = Run(start, n, threads, isa);
      all.insert(all.end(), o.begin(), o.end());
      start += n;
    }
    return all;
  }

  // Double-precision causal attention of query position t, head h.
  std::vector<double> Reference(int64_t t, int h) const {
    const int kvh = h / (c_.n_head / c_.n_kv);
    const float* q = q_.data() + (t * c_.n_head + h) * c_.hd;
    std::vector<double> s(static_cast<size_t>(t + 1)), out(static_cast<size_t>(c_.hd), 0.0);
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j <= t; ++j) {
      double d = 0;
      for (int i = 0; i < c_.hd; ++i) d += static_cast<double>(q[i]) * K(j, kvh)[i];
      s[static_cast<size_t>(j)] = d / std::sqrt(static_cast<double>(c_.hd));
      mx = std::max(mx, s[static_cast<size_t>(j)]);
    }
    for (int64_t j = 0; j <= t; ++j) sum += std::exp(s[static_cast<size_t>(j)] - mx);
    for (int64_t j = 0; j <= t; ++j) {
      const double p = std::exp(s[static_cast<size_t>(j)] - mx) / sum;
      for (int i = 0; i < c_.hd; ++i) out[static_cast<size_t>(i)] += p * V(j, kvh)[i];
    }
    return out;
  }

 private:
  const float* K(int64_t p, int h) const { return kv_.data() + (p * c_.n_kv + h) * c_.hd; }
  const float* V(int64_t p, int h) const { return kv_.data() + ((c_.positions + p) * c_.n_kv + h) * c_.hd; }

  Case c_;
  KvLayout layout_;
  std::vector<uint8_t> mem_;
  std::unique_ptr<KvPool> pool_;
  BlockTable table_;
  std::vector<float> kv_;  // [K, V][position][kv head][hd], the pool's values as floats
  std::vector<float> q_;   // [position][head][hd]
};

std::vector<QdotIsa> Isas() {
  std::vector<QdotIsa> v;
  for (QdotIsa isa : {QdotIsa::kScalar, QdotIsa::kAvx2, QdotIsa::kAvx512Vnni, QdotIsa::kAmx})
    if (QdotIsaSupported(isa)) v.push_back(isa);
  return v;
}

const Case kCases[] = {
    {9, 3, 64, 32, KvDtype::F16, 700},   // SmolLM2's heads: 3 chunks, split and unsplit paths
    {4, 2, 16, 5, KvDtype::F16, 300},    // the tiny model's heads, blocks not a divisor of the tile
    {4, 4, 24, 16, KvDtype::F32, 200},   // no GQA, a head size the SIMD kernels leave to plain C
    {8, 2, 128, 64, KvDtype::F16, 330},  // 8 registers per row
};

TEST(Attention, CloseToDoublePrecisionReference) {
  for (const Case& c : kCases) {
    Fixture f(c);
    const std::vector<float> out = f.Run(0, c.positions, 2, BestQdotIsa());
    double worst = 0;
    for (int64_t t = 0; t < c.positions; t += 7)
      for (int h = 0; h < c.n_head; ++h) {
        const std::vector<double> ref = f.Reference(t, h);
        for (int i = 0; i < c.hd; ++i)
          worst = std::max(worst, std::fabs(ref[static_cast<size_t>(i)] -
                                            out[static_cast<size_t>((t * c.n_head + h) * c.hd + i)]));
      }
    EXPECT_LT(worst, 2e-5) << "hd " << c.hd << " positions " << c.positions;
  }
}

TEST(Attention, SameBitsForEveryIsaThreadCountAndBatching) {
  for (const Case& c : kCases) {
    Fixture f(c);
    const std::vector<float> ref = f.RunPieces({c.positions}, 1, QdotIsa::kScalar);
    std::vector<int64_t> one_by_one(static_cast<size_t>(c.positions), 1);
    std::vector<int64_t> uneven;
    for (int64_t left = c.positions, k = 1; left > 0; k = k * 3 + 1) {
      uneven.push_back(std::min(left, k));
      left -= uneven.back();
    }
    for (QdotIsa isa : Isas()) {
      for (int threads : {1, 2, 5}) EXPECT_EQ(f.RunPieces({c.positions}, threads, isa), ref) << QdotIsaName(isa);
      EXPECT_EQ(f.RunPieces(uneven, 3, isa), ref) << QdotIsaName(isa);
      EXPECT_EQ(f.RunPieces(one_by_one, 2, isa), ref) << QdotIsaName(isa);
    }
  }
}

TEST(Attention, ExpNegCloseToExp) {
  double worst = 0;
  for (float x = -86.9f; x <= 0.0f; x += 0.0137f) {
    const double e = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(ExpNeg(x) - e) / e);
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(ExpNeg(0.0f), 1.0f);
  EXPECT_EQ(ExpNeg(-100.0f), 0.0f);
  EXPECT_EQ(ExpNeg(-INFINITY), 0.0f);
}

}  // namespace
}  // namespace kvf::engine
