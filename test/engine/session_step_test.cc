// Session::Step, the batched forward step, on the generated tiny model: every sequence of a step gets the logits
// it gets alone (bit for bit), whatever the other sequences, their order, the thread count or a max_batch that
// splits the step into several passes; a cancelled or invalid sequence is dropped without touching the others.
#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "engine/model.h"
#include "engine/session.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

constexpr int kTpb = 4;

struct Pool {
  std::vector<uint8_t> mem;
  std::unique_ptr<KvPool> pool;
  Pool(const Model& m, int64_t blocks) {
    const KvLayout l = KvLayoutFor(m, kTpb);
    mem.assign(static_cast<size_t>(blocks) * l.block_bytes(), 0);
    pool = std::make_unique<KvPool>(l, mem.data(), mem.size());
  }
};

std::vector<std::vector<int32_t>> Prompts(int count) {
  std::vector<std::vector<int32_t>> out;
  uint32_t x = 777;
  for (int s = 0; s < count; ++s) {
    std::vector<int32_t> p;
    for (int i = 0; i < 1 + (s * 7) % 19; ++i) {
      x = x * 1103515245u + 12345u;
      p.push_back(static_cast<int32_t>((x >> 8) % 300));
    }
    out.push_back(p);
  }
  return out;
}

class Step : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = Model::Load(testing::TinyModelPath()).release(); }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  static Model* model_;
};
Model* Step::model_ = nullptr;

// Prompt then three decode steps for each sequence: alone (one thread), then all together in one Step per
// position, in reverse order, with `threads` and `max_batch`.
void CheckBatched(const Model& m, int threads, int max_batch) {
  const auto prompts = Prompts(6);
  const int gen = 3;
  std::vector<std::vector<std::vector<float>>> alone(prompts.size());
  {
    Pool p(m, 64);
    Session s(m, *p.pool, SessionOptions{1, 512});
    for (size_t i = 0; i < prompts.size(); ++i) {
      BlockTable t;
      p.pool->Reserve(t, static_cast<int64_t>(prompts[i].size()) + gen);
      alone[i].push_back(s.Prefill(prompts[i], t, 0));
      for (int g = 1; g < gen; ++g)
        alone[i].push_back(s.Decode(Argmax(alone[i].back()), t, static_cast<int64_t>(prompts[i].size()) + g - 1));
    }
  }
  Pool p(m, 64);
  Session s(m, *p.pool, SessionOptions{threads, max_batch});
  std::vector<BlockTable> tables(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) p.pool->Reserve(tables[i], static_cast<int64_t>(prompts[i].size()) + gen);
  std::vector<std::vector<int32_t>> tokens(prompts.rbegin(), prompts.rend());
  for (int g = 0; g < gen; ++g) {
    std::vector<SeqBatch> batch;
    for (size_t k = 0; k < prompts.size(); ++k) {
      const size_t i = prompts.size() - 1 - k;
      const int64_t start = g == 0 ? 0 : static_cast<int64_t>(prompts[i].size()) + g - 1;
      batch.push_back({tokens[k].data(), static_cast<int64_t>(tokens[k].size()), &tables[i], start, true, {}});
    }
    std::vector<SeqResult> r = s.Step(batch);
    for (size_t k = 0; k < prompts.size(); ++k) {
      const size_t i = prompts.size() - 1 - k;
      ASSERT_TRUE(r[k].error.ok()) << r[k].error.message;
      EXPECT_EQ(r[k].logits, alone[i][static_cast<size_t>(g)]) << "sequence " << i << " step " << g;
      tokens[k] = {Argmax(r[k].logits)};
    }
  }
}

TEST_F(Step, BatchedMatchesAlone) { CheckBatched(*model_, 2, 512); }
TEST_F(Step, SplitIntoPassesMatchesAlone) { CheckBatched(*model_, 3, 7); }

TEST_F(Step, CancelledAndConflictingSequencesAreDropped) {
  const auto prompts = Prompts(3);
  Pool p(*model_, 32);
  Session s(*model_, *p.pool, SessionOptions{2, 512});
  std::vector<BlockTable> t(3);
  for (size_t i = 0; i < 3; ++i) p.pool->Reserve(t[i], static_cast<int64_t>(prompts[i].size()));
  const std::vector<float> alone = s.Prefill(prompts[2], t[2], 0);
  const int32_t raised = 1;
  std::vector<SeqBatch> batch = {
      {prompts[0].data(), static_cast<int64_t>(prompts[0].size()), &t[0], 0, true, CancelFlag(&raised)},
      {prompts[2].data(), static_cast<int64_t>(prompts[2].size()), &t[2], 0, true, {}},
      {prompts[1].data(), static_cast<int64_t>(prompts[1].size()), &t[2], 0, true, {}},  // writes t[2] too
      {prompts[1].data(), 0, &t[1], 0, true, {}},                                          // no tokens
  };
  std::vector<SeqResult> r = s.Step(batch);
  EXPECT_EQ(r[0].error.code, "KVF_ERR_CANCELLED");
  EXPECT_TRUE(r[0].logits.empty());
  EXPECT_TRUE(r[1].error.ok());
  EXPECT_EQ(r[1].logits, alone);
  EXPECT_EQ(r[2].error.code, "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(r[3].error.code, "KVF_ERR_INVALID_ARGUMENT");
  // All cancelled: the pass stops.
  batch.resize(1);
  EXPECT_EQ(s.Step(batch)[0].error.code, "KVF_ERR_CANCELLED");
}

}  // namespace
}  // namespace kvf::engine
