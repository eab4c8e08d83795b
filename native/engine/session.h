// The Llama forward pass on the CPU over a paged KV cache (kv_cache.h).
//
// Matrix products: for quantized weights (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) the activations are quantized to
// 8 bits per block of 32 once per token, as llama.cpp's CPU backend does, and each weight block is dotted
// with them in integers (qdot.h); F32/F16/BF16 weights are converted to float and dotted with the float
// activations. Prefill runs a batch of positions at once: each tile of weight rows is unpacked once per
// batch and dotted with every token, which is what makes it faster than token-by-token decoding. Decode
// is a batch of one through the same code, and Step (session_step.cc) runs the rows of many sequences (decodes
// and prompt chunks of different requests) as one batch, each with its own block table (continuous batching). Every
// (row, token) product is computed by the same sequence of operations whatever the batch, tile or thread count, and
// every position's K/V goes into the pool (rounded to the pool's dtype) before attention reads it back through the
// block table, so a prompt gives the same logits whether it was prefilled in one batch, in chunks or decoded token by
// token, and blocks copied to other ids (or pulled from another process) give the same logits too.
//
// Math follows llama.cpp's LLAMA graph: RMSNorm (sum of squares in double), RoPE of type NORM
// (rotation of adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/rope_dim), theta built iteratively in
// float as ggml_rope_cache_init does; GGUF's llama Q/K weights are permuted at conversion for this),
// grouped-query causal attention (attention.h: tiled online softmax over the paged K/V, with one fixed order of
// operations), SwiGLU FFN, final norm, output head.
//
// Errors: KVF_ERR_CONTEXT_OVERFLOW (positions past llama.context_length), KVF_ERR_INVALID_ARGUMENT
// (no tokens, token id outside the vocabulary, negative position, block table too short or with ids
// outside the pool, pool layout not matching the model).
#pragma once

#include <cstdint>
#include <vector>

#include "core/error.h"
#include "engine/attention.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/packed.h"
#include "engine/qdot.h"
#include "engine/thread_pool.h"

namespace kvf::engine {

// The pool layout this model needs: numLayers, numKvHeads and headDim from the model.
KvLayout KvLayoutFor(const Model& model, int tokens_per_block = 32, KvDtype dtype = KvDtype::F16);

struct SessionOptions {
  int threads = 0;  // <= 0: hardware_concurrency
  // Prompts longer than this run as several batches (bounds activation memory).
  int max_batch = 512;
};

// A word another thread sets to non-zero to stop a forward pass at its next layer: the request it serves has
// ended (client gone, timed out, cancelled), and finishing the pass would only take the cores from others.
class CancelFlag {
 public:
  CancelFlag() = default;
  explicit CancelFlag(const int32_t* word) : word_(word) {}
  bool raised() const { return word_ != nullptr && __atomic_load_n(word_, __ATOMIC_RELAXED) != 0; }

 private:
  const int32_t* word_ = nullptr;
};

// One sequence of a batched step (Session::Step): `n` tokens at positions start_pos.., written through `table`
// (which must cover positions [0, start_pos + n)). Pointers are the caller's and must outlive the call.
struct SeqBatch {
  const int32_t* tokens = nullptr;
  int64_t n = 0;
  const BlockTable* table = nullptr;
  int64_t start_pos = 0;
  bool logits = true;  // whether the last token's logits are wanted (not for a prompt's inner chunks)
  CancelFlag cancel;
};

// A sequence's outcome in a step: its last token's logits (when wanted), or the error that dropped it
// (invalid arguments, context overflow, or KVF_ERR_CANCELLED when its cancel word was raised).
struct SeqResult {
  std::vector<float> logits;
  ErrorInfo error;
};

// Not thread-safe: one forward pass at a time per Session. Several Sessions may share a Model, and a
// pool when their block tables do not overlap.
class Session {
 public:
  Session(const Model& model, KvPool& pool, const SessionOptions& options = {});

  // Runs tokens at positions start_pos, start_pos + 1, ... writing their K/V into the pool through
  // `table` (which must already hold blocks for positions [0, start_pos + tokens.size()); positions
  // before start_pos must have been written earlier). Returns the logits of the last token. A raised `cancel`
  // ends the pass at the next layer with KVF_ERR_CANCELLED (the K/V it wrote is then incomplete).
  std::vector<float> Prefill(const std::vector<int32_t>& tokens, const BlockTable& table, int64_t start_pos,
                             CancelFlag cancel = {});
  // Prefill of one token.
  std::vector<float> Decode(int32_t token, const BlockTable& table, int64_t pos, CancelFlag cancel = {});

  // One batched step over many sequences: their rows are concatenated into one activation batch, so each
  // weight tile is unpacked once for all of them; K/V store and attention run per sequence through its own
  // table. A row's computation depends only on its own token, position and its sequence's cached K/V, so a
  // sequence's logits are bit-identical whatever else shares the step. More than max_batch rows run as several
  // passes (a sequence may be split between them). A sequence that fails validation, or whose block table
  // touches a block another (earlier) sequence of the step writes, gets its error and does not run; one whose
  // cancel word is raised is dropped at the next pass boundary, or the pass stops when all of its sequences
  // are cancelled. The others are unaffected.
  std::vector<SeqResult> Step(const std::vector<SeqBatch>& batch);

  int threads() const { return pool_threads_.size(); }
  // Wall time spent in the matrix products and in attention since the Session was made (two clock reads
  // per call), to show where the time goes as the context grows.
  struct Timings {
    uint64_t matmul_ns = 0, attention_ns = 0;
  };
  const Timings& timings() const { return timings_; }
  const Model& model() const { return model_; }

 private:
  struct MatJob {
    const GgufTensor* w;
    float* y;  // [n_tokens][rows]
  };
  // One sequence's rows in a pass: `n` tokens from `start`; `logits` receives the last row's (or null).
  struct Segment {
    const int32_t* tokens;
    int64_t n;
    const BlockTable* table;
    int64_t start;
    float* logits;
    CancelFlag cancel;
  };
  // One pass over the segments' rows, concatenated; KVF_ERR_CANCELLED when all their cancel words are raised.
  void Forward(const std::vector<Segment>& segs);
  void Logits(const std::vector<Segment>& segs, const std::vector<int64_t>& last_rows);
  void Validate(const SeqBatch& seq) const;
  void MatMul(const MatJob* jobs, int n_jobs, const float* x, int64_t n_tokens);
  // fn(t) for every row t < n, rows split between the threads (each row's arithmetic is its own).
  template <class Fn>
  void PerToken(int64_t n, const Fn& fn) {
    pool_threads_.ParallelFor(n, [&](int64_t begin, int64_t end, int) {
      for (int64_t t = begin; t < end; ++t) fn(t);
    });
  }
  void RowTiles(const GgufTensor& w, int64_t lo, int64_t hi, const float* x, int64_t n_tokens, float* y, int thread);
  // Attention of every segment's query rows (q_ from row first[i]) into attn_ (same rows), in one dispatch.
  void Attention(int layer, const std::vector<Segment>& segs, const std::vector<int64_t>& first);
  // Stores one sequence's n K and V rows (k, v: its first row, [n][n_head_kv * head_dim]) into the pool.
  void StoreKv(int layer, const BlockTable& table, int64_t start, int64_t n, const float* k, const float* v);

  const Model& model_;
  KvPool& pool_;
  SessionOptions options_;
  ThreadPool pool_threads_;
  QdotIsa isa_;
  QuantizedActivations xq_;                    // the current MatMul's x, for quantized weights
  std::vector<UnpackedRows> unpacked_;         // per thread
  std::vector<PackedScratch> packed_scratch_;  // per thread
  // Activations for one batch, [token][...].
  std::vector<float> x_, xn_, q_, k_, v_, attn_, tmp_, gate_, up_;
  std::vector<float> rope_cos_, rope_sin_;   // [token][rope_dim / 2]
  std::vector<float> out_;                   // the output head's rows, [sequence][n_vocab]
  std::vector<std::vector<float>> scratch_;  // per thread
  AttentionScratch attn_scratch_;
  std::vector<AttentionArgs> attn_args_;
  Timings timings_;
};

// Index of the largest logit (the first on ties).
int32_t Argmax(const std::vector<float>& logits);

}  // namespace kvf::engine
