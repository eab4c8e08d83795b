// Causal grouped-query attention of one sequence over its paged K/V (kv_cache.h), as free functions that
// Session::Attention wraps.
//
// Shape of the work. Positions are cut into fixed tiles of kKvTile and fixed chunks of kChunk positions
// (multiples of kKvTile), both counted from position 0, independent of the block size. A tile's K and V
// rows are converted to float once and used by every query row that sees them: all query heads of the
// tile's KV head (GQA) and, in prefill, a tile of kQueryTile queries. Each query row keeps an online
// softmax state (running max m, sum l, unnormalised output acc) per chunk; a chunk's state is merged
// into the row's total at the chunk's end. Work items are (KV head, query tile) or, when those are too
// few to keep the threads busy (decode, short batches), (KV head, query tile, chunk), whose chunk states
// are then merged by a second pass. Items are taken from a shared counter, so the long ones do not wait
// behind a fixed split.
//
// Why the results stay bit-identical whatever the thread count, the batch, the chunking of a prompt and
// the item split: for a query at position p, every float operation depends only on p, its q row and the
// K/V of positions 0..p, in an order fixed by the constants below:
//   for each chunk c of [0, p] in order:  S = empty
//     for each tile of c in order (the last one cut at p):  S = TileStep(S, q, tile)   (attention_kernels.h)
//     T = Merge(T, S)   (T = S when T is empty)
//   out = T.acc * (1 / T.l)
// A decode step and the row of the same position in a prefill batch hence run the same operations; the
// SIMD kernels (AVX2 + F16C, AVX-512) follow the plain-C kernel's order exactly (no FMA: the files are
// built with -ffp-contract=off), so the ISA does not change the bits either.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/qdot.h"
#include "engine/thread_pool.h"

namespace kvf::engine {

constexpr int kKvTile = 64;     // positions per tile
constexpr int kChunk = 256;     // positions per chunk (a multiple of kKvTile)
constexpr int kQueryTile = 16;  // queries of a prefill batch sharing each converted tile

// Buffers reused from call to call (one per Session).
struct AttentionScratch {
  struct Item {
    int seq;  // which of the call's sequences
    int kvh;
    int64_t qt;      // query tile
    int64_t c0, c1;  // chunks [c0, c1)
  };
  std::vector<Item> items;
  std::vector<std::vector<float>> per_thread;
  // Chunk states of the split path, per sequence from partial_at[seq]: [query][head][chunk][m, l, acc...].
  std::vector<float> partial;
  std::vector<size_t> partial_at;
};

struct AttentionArgs {
  const KvPool* pool = nullptr;
  int layer = 0;
  const BlockTable* table = nullptr;
  int n_head = 0;            // query heads; the pool layout gives the KV heads and the head size
  int64_t start = 0;         // position of the first query
  int64_t n = 0;             // queries, at positions start .. start + n - 1
  const float* q = nullptr;  // [n][n_head * head_dim], RoPE applied
  float* out = nullptr;      // [n][n_head * head_dim]
  float scale = 1.0f;        // applied to q . k
  QdotIsa isa = QdotIsa::kScalar;
};

// Positions 0 .. start + n - 1 of each table must have been stored. The work items of all `count` sequences
// share one dispatch over every thread of `threads` (a batched decode step has many one-row sequences); an
// item's operations do not depend on which others share it.
void PagedAttention(const AttentionArgs* seqs, int count, ThreadPool& threads, AttentionScratch& scratch);

}  // namespace kvf::engine
