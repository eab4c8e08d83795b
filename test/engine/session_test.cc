// The Llama forward pass over the paged KV cache, on the generated tiny model and (when fetched) on
// SmolLM2-135M-Instruct Q4_1:
//   - whole-prompt prefill, chunked prefill and token-by-token decode give the same greedy tokens and
//     logits (the engine stores every K/V in the pool before attention reads it back, so the paths are
//     expected to agree bit for bit; the assertion allows kLogitTol);
//   - blocks copied byte for byte to other ids of another pool continue the sequence identically;
//   - results do not depend on the thread count;
//   - pool exhaustion, context overflow and bad arguments give coded errors;
//   - SmolLM2 answers the capital-of-France prompt with Paris.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/model.h"
#include "engine/session.h"
#include "gguf_builder.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::ThrownCode;

// Allowed max |logit difference| between prefill paths. Observed: 0 (bit-identical) on both models.
constexpr float kLogitTol = 1e-4f;

struct OwnedPool {
  std::vector<uint8_t> mem;
  std::unique_ptr<KvPool> pool;
  OwnedPool(const Model& m, int64_t blocks, int tokens_per_block, KvDtype dtype = KvDtype::F16) {
    const KvLayout l = KvLayoutFor(m, tokens_per_block, dtype);
    mem.assign(static_cast<size_t>(blocks) * l.block_bytes(), 0);
    pool = std::make_unique<KvPool>(l, mem.data(), mem.size());
  }
};

struct Trace {
  std::vector<int32_t> tokens;               // generated
  std::vector<std::vector<float>> logits;    // before each generated token
};

float MaxAbsDiff(const Trace& a, const Trace& b) {
  float d = 0;
  for (size_t i = 0; i < std::min(a.logits.size(), b.logits.size()); ++i)
    for (size_t j = 0; j < a.logits[i].size(); ++j) d = std::max(d, std::fabs(a.logits[i][j] - b.logits[i][j]));
  return d;
}

enum class Mode { kBatch, kChunked, kTokenByToken };

// Runs the prompt (in the given mode) then `gen` greedy tokens; logits recorded before each.
Trace Greedy(Session& s, const BlockTable& table, const std::vector<int32_t>& prompt, int gen, Mode mode) {
  std::vector<float> logits;
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (mode == Mode::kBatch) {
    logits = s.Prefill(prompt, table, 0);
  } else if (mode == Mode::kChunked) {
    const int64_t cut = n / 3;
    s.Prefill(std::vector<int32_t>(prompt.begin(), prompt.begin() + cut), table, 0);
    logits = s.Prefill(std::vector<int32_t>(prompt.begin() + cut, prompt.end()), table, cut);
  } else {
    for (int64_t i = 0; i < n; ++i) logits = s.Decode(prompt[static_cast<size_t>(i)], table, i);
  }
  Trace tr;
  int64_t pos = n;
  for (int g = 0; g < gen; ++g) {
    tr.logits.push_back(logits);
    const int32_t tok = Argmax(logits);
    tr.tokens.push_back(tok);
    if (g + 1 < gen) logits = s.Decode(tok, table, pos++);
  }
  return tr;
}

std::vector<int32_t> TinyPrompt() {
  std::vector<int32_t> p;
  uint32_t x = 12345;
  for (int i = 0; i < 21; ++i) {
    x = x * 1103515245u + 12345u;
    p.push_back(static_cast<int32_t>((x >> 8) % 300));
  }
  return p;
}

// Every prefill path, one fresh table each, gives the same tokens and logits as the batch path.
void CheckPrefillPaths(const Model& m, const std::vector<int32_t>& prompt, int gen, int tpb, int threads) {
  const int64_t positions = static_cast<int64_t>(prompt.size()) + gen;
  OwnedPool p(m, 3 * KvLayoutFor(m, tpb).BlocksFor(positions), tpb);
  Session s(m, *p.pool, SessionOptions{threads, 512});
  Trace ref;
  for (Mode mode : {Mode::kBatch, Mode::kChunked, Mode::kTokenByToken}) {
    BlockTable table;
    p.pool->Reserve(table, positions);
    Trace tr = Greedy(s, table, prompt, gen, mode);
    if (mode == Mode::kBatch) {
      ref = tr;
      continue;
    }
    EXPECT_EQ(tr.tokens, ref.tokens) << "mode " << static_cast<int>(mode);
    const float d = MaxAbsDiff(tr, ref);
    std::printf("prefill path %d vs batch: max |logit diff| %g over %d steps\n", static_cast<int>(mode), d, gen);
    EXPECT_LE(d, kLogitTol);
  }
}

// Runs `prompt` plus `before` greedy tokens in pool A through blocks `table_a`, copies the blocks to
// pool B at `table_b`, then continues `after` tokens in both: identical tokens and logits.
void CheckPagedCopy(const Model& m, const std::vector<int32_t>& prompt, int before, int after, int tpb,
                    const BlockTable& table_a, const BlockTable& table_b, int64_t pool_blocks) {
  ASSERT_EQ(table_a.size(), table_b.size());
  const int64_t positions = static_cast<int64_t>(prompt.size()) + before + after;
  ASSERT_GE(static_cast<int64_t>(table_a.size()), KvLayoutFor(m, tpb).BlocksFor(positions));
  OwnedPool a(m, pool_blocks, tpb), b(m, pool_blocks, tpb);
  a.pool->Claim(table_a);
  b.pool->Claim(table_b);
  // Garbage in B's unused blocks, so that reading the wrong block would show.
  for (size_t i = 0; i < b.mem.size(); ++i) b.mem[i] = static_cast<uint8_t>(i * 31 + 7);
  Session sa(m, *a.pool), sb(m, *b.pool);

  Trace first = Greedy(sa, table_a, prompt, before + 1, Mode::kBatch);
  int64_t pos = static_cast<int64_t>(prompt.size()) + before;  // the last generated token is not yet run
  const size_t bytes = a.pool->layout().block_bytes();
  for (size_t i = 0; i < table_a.size(); ++i)
    std::memcpy(b.pool->Block(table_b[i]), a.pool->Block(table_a[i]), bytes);

  int32_t tok_a = first.tokens.back(), tok_b = tok_a;
  for (int i = 0; i < after; ++i, ++pos) {
    std::vector<float> la = sa.Decode(tok_a, table_a, pos);
    std::vector<float> lb = sb.Decode(tok_b, table_b, pos);
    ASSERT_EQ(la, lb) << "step " << i;
    tok_a = Argmax(la);
    tok_b = Argmax(lb);
  }
}

// ------------------------------------------------------------------------------------------------
// Tiny model

class Tiny : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { model_ = Model::Load(testing::TinyModelPath()).release(); }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  static Model* model_;
};
Model* Tiny::model_ = nullptr;

TEST_F(Tiny, Hparams) {
  const LlamaHparams& hp = model_->hparams();
  EXPECT_EQ(hp.n_layer, 2);
  EXPECT_EQ(hp.n_embd, 64);
  EXPECT_EQ(hp.n_head, 4);
  EXPECT_EQ(hp.n_head_kv, 2);
  EXPECT_EQ(hp.head_dim, 16);
  EXPECT_EQ(hp.n_ff, 128);
  EXPECT_EQ(hp.n_vocab, 300);
  EXPECT_EQ(hp.n_ctx, 256);
  EXPECT_EQ(hp.rope_dim, 16);
  EXPECT_FLOAT_EQ(hp.rope_freq_base, 10000.0f);
  EXPECT_FLOAT_EQ(hp.rms_eps, 1e-5f);
  EXPECT_FALSE(model_->tied_output());
}

TEST_F(Tiny, PrefillMatchesDecode) { CheckPrefillPaths(*model_, TinyPrompt(), 24, 4, 2); }

TEST_F(Tiny, PagedBlocksCopiedElsewhere) {
  // 21 prompt + 5 + 12 = 38 positions = 10 blocks of 4.
  CheckPagedCopy(*model_, TinyPrompt(), 5, 12, 4, {3, 7, 1, 12, 5, 0, 15, 9, 2, 11},
                 {14, 2, 9, 0, 6, 13, 4, 10, 8, 1}, 16);
}

TEST_F(Tiny, ThreadCountDoesNotChangeResults) {
  const std::vector<int32_t> prompt = TinyPrompt();
  std::vector<std::vector<float>> out;
  for (int threads : {1, 3, 8}) {
    OwnedPool p(*model_, 8, 8);
    Session s(*model_, *p.pool, SessionOptions{threads, 512});
    BlockTable t;
    p.pool->Reserve(t, static_cast<int64_t>(prompt.size()));
    out.push_back(s.Prefill(prompt, t, 0));
  }
  EXPECT_EQ(out[0], out[1]);
  EXPECT_EQ(out[0], out[2]);
}

TEST_F(Tiny, SmallMaxBatchMatches) {
  const std::vector<int32_t> prompt = TinyPrompt();
  std::vector<std::vector<float>> out;
  for (int max_batch : {512, 5}) {
    OwnedPool p(*model_, 8, 8);
    Session s(*model_, *p.pool, SessionOptions{2, max_batch});
    BlockTable t;
    p.pool->Reserve(t, static_cast<int64_t>(prompt.size()));
    out.push_back(s.Prefill(prompt, t, 0));
  }
  EXPECT_EQ(out[0], out[1]);
}

TEST_F(Tiny, F32CacheCloseToF16) {
  const std::vector<int32_t> prompt = TinyPrompt();
  std::vector<std::vector<float>> out;
  for (KvDtype dt : {KvDtype::F32, KvDtype::F16}) {
    OwnedPool p(*model_, 8, 8, dt);
    Session s(*model_, *p.pool);
    BlockTable t;
    p.pool->Reserve(t, static_cast<int64_t>(prompt.size()));
    out.push_back(s.Prefill(prompt, t, 0));
  }
  float d = 0;
  for (size_t i = 0; i < out[0].size(); ++i) d = std::max(d, std::fabs(out[0][i] - out[1][i]));
  std::printf("f32 vs f16 KV cache: max |logit diff| %g\n", d);
  EXPECT_LT(d, 0.05f);
  EXPECT_GT(d, 0.0f);  // f16 rounding is really applied
}

TEST_F(Tiny, Errors) {
  const LlamaHparams& hp = model_->hparams();
  OwnedPool p(*model_, 4, 32);  // 128 positions
  Session s(*model_, *p.pool, SessionOptions{2, 512});
  BlockTable t;
  EXPECT_EQ(ThrownCode([&] { p.pool->Reserve(t, 129); }), "KVF_ERR_POOL_EXHAUSTED");
  p.pool->Reserve(t, 128);
  EXPECT_EQ(ThrownCode([&] { p.pool->Allocate(1); }), "KVF_ERR_POOL_EXHAUSTED");

  // Context overflow is checked before the table: the model's context is 256 positions.
  std::vector<int32_t> long_prompt(static_cast<size_t>(hp.n_ctx) + 1, 5);
  EXPECT_EQ(ThrownCode([&] { s.Prefill(long_prompt, t, 0); }), "KVF_ERR_CONTEXT_OVERFLOW");
  EXPECT_EQ(ThrownCode([&] { s.Decode(5, t, hp.n_ctx); }), "KVF_ERR_CONTEXT_OVERFLOW");
  EXPECT_EQ(ThrownCode([&] { s.Prefill({5, 6}, t, hp.n_ctx - 1); }), "KVF_ERR_CONTEXT_OVERFLOW");

  EXPECT_EQ(ThrownCode([&] { s.Decode(5, t, 128); }), "KVF_ERR_INVALID_ARGUMENT");  // table too short
  EXPECT_EQ(ThrownCode([&] { s.Prefill({}, t, 0); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { s.Decode(300, t, 0); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { s.Decode(-1, t, 0); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { s.Decode(5, t, -1); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { s.Decode(5, BlockTable{9}, 0); }), "KVF_ERR_INVALID_ARGUMENT");  // outside pool
  EXPECT_EQ(s.Decode(5, t, 0).size(), 300u);

  KvLayout other = KvLayoutFor(*model_, 32);
  other.head_dim = 8;
  std::vector<uint8_t> mem(other.block_bytes());
  KvPool wrong(other, mem.data(), mem.size());
  EXPECT_EQ(ThrownCode([&] { Session bad(*model_, wrong); }), "KVF_ERR_INVALID_ARGUMENT");
}

TEST(ModelLoad, BadModels) {
  using testing::GgufBuilder;
  // Not llama.
  GgufBuilder b = GgufBuilder::Default();
  b.kv.push_back(GgufBuilder::KvString("general.architecture", "gpt2"));
  std::vector<uint8_t> bytes = b.Build();
  EXPECT_EQ(ThrownCode([&] { Model::FromGguf(GgufFile::Parse(bytes.data(), bytes.size())); }), "KVF_ERR_BAD_MODEL");
  // Llama without its keys, then with keys but without the tensors.
  GgufBuilder c = GgufBuilder::Default();
  c.kv.push_back(GgufBuilder::KvString("general.architecture", "llama"));
  bytes = c.Build();
  EXPECT_EQ(ThrownCode([&] { Model::FromGguf(GgufFile::Parse(bytes.data(), bytes.size())); }), "KVF_ERR_BAD_MODEL");
  for (const char* k : {"llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                        "llama.feed_forward_length", "llama.context_length"})
    c.kv.push_back(GgufBuilder::KvU32(k, 4));
  bytes = c.Build();
  EXPECT_EQ(ThrownCode([&] { Model::FromGguf(GgufFile::Parse(bytes.data(), bytes.size())); }), "KVF_ERR_BAD_MODEL");
  EXPECT_EQ(ThrownCode([] { Model::Load("/nonexistent/model.gguf"); }), "KVF_ERR_BAD_MODEL");
}

// ------------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct Q4_1 (skipped when not fetched)

class Smol : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string p = testing::RealModelPath();
    if (!p.empty()) model_ = Model::Load(p).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "SmolLM2-135M-Instruct.Q4_1.gguf not fetched (npm run fetch-model)";
  }
  // Token ids by exact lookup of token strings (GPT-2 byte symbols: 'Ġ' space, 'Ċ' newline). The pieces
  // are what SmolLM2's BPE merges give ("assistant" is "ass" + "istant").
  static std::vector<int32_t> Ids(const std::vector<std::string>& pieces) {
    const auto& vocab = model_->gguf().Get("tokenizer.ggml.tokens").Strings();
    std::vector<int32_t> ids;
    for (const std::string& p : pieces) {
      auto it = std::find(vocab.begin(), vocab.end(), p);
      EXPECT_NE(it, vocab.end()) << p;
      ids.push_back(it == vocab.end() ? 0 : static_cast<int32_t>(it - vocab.begin()));
    }
    return ids;
  }
  static std::string Text(const std::vector<int32_t>& ids) {
    const auto& vocab = model_->gguf().Get("tokenizer.ggml.tokens").Strings();
    std::string s;
    for (int32_t id : ids) {
      std::string piece(vocab[static_cast<size_t>(id)]);
      for (auto [from, to] : {std::pair<std::string, std::string>{"\xC4\xA0", " "}, {"\xC4\x8A", "\n"}})
        for (size_t at; (at = piece.find(from)) != std::string::npos;) piece.replace(at, from.size(), to);
      s += piece;
    }
    return s;
  }
  static std::vector<int32_t> ChatPrompt() {
    return Ids({"<|im_start|>", "user", "\xC4\x8A", "What", "\xC4\xA0" "is", "\xC4\xA0" "the", "\xC4\xA0" "capital",
                "\xC4\xA0" "of", "\xC4\xA0" "France", "?", "<|im_end|>", "\xC4\x8A", "<|im_start|>", "ass", "istant", "\xC4\x8A"});
  }
  static Model* model_;
};
Model* Smol::model_ = nullptr;

TEST_F(Smol, Hparams) {
  const LlamaHparams& hp = model_->hparams();
  EXPECT_EQ(hp.n_layer, 30);
  EXPECT_EQ(hp.n_embd, 576);
  EXPECT_EQ(hp.n_head, 9);
  EXPECT_EQ(hp.n_head_kv, 3);
  EXPECT_EQ(hp.head_dim, 64);
  EXPECT_EQ(hp.n_ff, 1536);
  EXPECT_EQ(hp.n_vocab, 49152);
  EXPECT_EQ(hp.n_ctx, 8192);
  EXPECT_EQ(hp.rope_dim, 64);
  EXPECT_FLOAT_EQ(hp.rope_freq_base, 100000.0f);
  EXPECT_TRUE(model_->tied_output());
}

TEST_F(Smol, PrefillMatchesDecode) { CheckPrefillPaths(*model_, ChatPrompt(), 16, 8, 2); }

TEST_F(Smol, PagedBlocksCopiedElsewhere) {
  // 16 prompt + 3 + 8 = 27 positions = 4 blocks of 8.
  CheckPagedCopy(*model_, ChatPrompt(), 3, 8, 8, {3, 7, 1, 5}, {6, 0, 4, 2}, 8);
}

TEST_F(Smol, CapitalOfFrance) {
  const std::vector<int32_t> prompt = ChatPrompt();
  ASSERT_EQ(prompt.size(), 16u);
  OwnedPool p(*model_, 4, 32);
  Session s(*model_, *p.pool, SessionOptions{2, 512});
  BlockTable t;
  p.pool->Reserve(t, static_cast<int64_t>(prompt.size()) + 20);
  Trace tr = Greedy(s, t, prompt, 20, Mode::kBatch);
  const std::string text = Text(tr.tokens);
  std::printf("SmolLM2 greedy, 20 tokens: \"%s\"\n", text.c_str());
  EXPECT_NE(text.find("Paris"), std::string::npos) << text;
}

}  // namespace
}  // namespace kvf::engine
