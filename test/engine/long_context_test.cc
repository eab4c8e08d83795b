// The forward pass past 2,000 positions, where attention runs over many KV tiles and chunks and decode steps
// split their work by KV chunk (attention.h), on the tiny model with a 4096-position context and (when
// fetched) SmolLM2-135M-Instruct Q4_1:
//   - prefill in one pass, in uneven chunks, and token by token give the same logits bit for bit;
//   - the thread count does not change them either.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/session.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

std::vector<int32_t> Prompt(int64_t n, int32_t vocab, uint32_t seed) {
  std::vector<int32_t> p;
  for (int64_t i = 0; i < n; ++i) {
    seed = seed * 1103515245u + 12345u;
    p.push_back(static_cast<int32_t>((seed >> 8) % static_cast<uint32_t>(vocab)));
  }
  return p;
}

// Runs `prompt` then `gen` teacher-forced tokens (the prompt's own first tokens, so that every path feeds
// the same ones) and returns the logits after the prompt and after each of them. The prompt runs as calls
// of `pieces` tokens (the last piece takes the rest; 1: token by token).
std::vector<std::vector<float>> Logits(const Model& m, const std::vector<int32_t>& prompt, int gen, int threads,
                                       int max_batch, const std::vector<int64_t>& pieces) {
  const int64_t positions = static_cast<int64_t>(prompt.size()) + gen;
  const KvLayout layout = KvLayoutFor(m, 16);
  std::vector<uint8_t> mem(static_cast<size_t>(layout.BlocksFor(positions)) * layout.block_bytes());
  KvPool pool(layout, mem.data(), mem.size());
  BlockTable table;
  pool.Reserve(table, positions);
  Session s(m, pool, SessionOptions{threads, max_batch});
  std::vector<std::vector<float>> out;
  std::vector<float> logits;
  int64_t done = 0;
  const int64_t n = static_cast<int64_t>(prompt.size());
  for (size_t i = 0; done < n; ++i) {
    const int64_t len = i + 1 < pieces.size() ? std::min(pieces[i], n - done) : n - done;
    if (pieces.size() == 1 && pieces[0] == 1) {
      logits = s.Decode(prompt[static_cast<size_t>(done)], table, done);
      done += 1;
      continue;
    }
    logits = s.Prefill(std::vector<int32_t>(prompt.begin() + done, prompt.begin() + done + len), table, done);
    done += len;
  }
  out.push_back(logits);
  for (int g = 0; g < gen; ++g) out.push_back(s.Decode(prompt[static_cast<size_t>(g)], table, n + g));
  return out;
}

TEST(LongContext, TinyPrefillChunksAndDecodeAgreeBitForBit) {
  auto m = Model::Load(testing::TinyLongModelPath());
  ASSERT_EQ(m->hparams().n_ctx, 4096);
  const std::vector<int32_t> prompt = Prompt(2300, m->hparams().n_vocab, 99);
  const auto batch = Logits(*m, prompt, 4, 2, 512, {2300});
  EXPECT_EQ(Logits(*m, prompt, 4, 3, 700, {333, 1000, 1}), batch);  // uneven chunks, other batch limit
  EXPECT_EQ(Logits(*m, prompt, 4, 2, 512, {1}), batch);              // token by token
}

TEST(LongContext, TinyThreadCountDoesNotChangeResults) {
  auto m = Model::Load(testing::TinyLongModelPath());
  const std::vector<int32_t> prompt = Prompt(3000, m->hparams().n_vocab, 7);
  const auto one = Logits(*m, prompt, 2, 1, 512, {3000});
  for (int threads : {2, 5}) EXPECT_EQ(Logits(*m, prompt, 2, threads, 512, {3000}), one) << threads << " threads";
}

TEST(LongContext, SmolPrefillAndDecodeAgreeBitForBitAcrossThreadCounts) {
  const std::string path = testing::RealModelPath();
  if (path.empty()) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not fetched (npm run fetch-model)";
  auto m = Model::Load(path);
  const std::vector<int32_t> prompt = Prompt(2100, m->hparams().n_vocab, 5);
  const auto batch = Logits(*m, prompt, 3, 2, 512, {2100});
  // 2040 positions in chunks of at most 300 on 3 threads, then the last 60 one forward pass each.
  std::vector<int64_t> pieces(7, 300);
  pieces[6] = 240;
  for (int i = 0; i < 60; ++i) pieces.push_back(1);
  pieces.push_back(1);
  EXPECT_EQ(Logits(*m, prompt, 3, 3, 300, pieces), batch);
}

}  // namespace
}  // namespace kvf::engine
