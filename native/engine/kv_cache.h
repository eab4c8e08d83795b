// Paged KV cache over caller-provided memory (later: fabric-registered memory, so that blocks move
// between processes by RDMA and are used in place). Layout, as TensorRT-LLM's pool:
//
//   pool    = [numBlocks][numLayers][2 (K, V)][section]
//   section = [numKvHeads][tokensPerBlock][headDim] elements of f16 or f32
//
// so one block id is one contiguous byte range holding every layer's K and V for tokensPerBlock
// positions. A sequence's block table maps position p to block table[p / tokensPerBlock], slot
// p % tokensPerBlock; blocks may sit anywhere in the pool.
//
// Errors: KVF_ERR_POOL_EXHAUSTED (not enough free blocks), KVF_ERR_INVALID_ARGUMENT (bad geometry,
// memory too small, block id out of range or freed twice).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvf::engine {

enum class KvDtype : uint32_t { F32 = 0, F16 = 1 };

using BlockTable = std::vector<int32_t>;

struct KvLayout {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int tokens_per_block = 32;
  KvDtype dtype = KvDtype::F16;

  size_t elem_bytes() const { return dtype == KvDtype::F16 ? 2 : 4; }
  // Bytes of one K (or V) section: numKvHeads × tokensPerBlock × headDim elements.
  size_t section_bytes() const;
  // Bytes of one block: numLayers × 2 sections.
  size_t block_bytes() const;
  // Byte offset of block `block`'s K (kv = 0) or V (kv = 1) section of `layer` from the pool start.
  size_t Offset(int64_t block, int layer, int kv) const;
  // Blocks needed to hold `tokens` positions.
  int64_t BlocksFor(int64_t tokens) const { return (tokens + tokens_per_block - 1) / tokens_per_block; }
  // Throws KVF_ERR_INVALID_ARGUMENT unless every field is positive and the dtype known.
  void Validate() const;
};

class KvPool {
 public:
  // Uses `bytes` bytes at `base` (not owned; the caller keeps it alive) as floor(bytes / block_bytes)
  // blocks, all free. Throws KVF_ERR_INVALID_ARGUMENT when not even one block fits.
  KvPool(const KvLayout& layout, void* base, size_t bytes);

  const KvLayout& layout() const { return layout_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  uint8_t* base() const { return base_; }

  // Start of block `block`'s K or V section of `layer` (block range checked).
  uint8_t* Section(int64_t block, int layer, int kv) const;
  uint8_t* Block(int64_t block) const;

  // Takes `count` free blocks (all or none; KVF_ERR_POOL_EXHAUSTED otherwise).
  std::vector<int32_t> Allocate(int64_t count);
  // Appends blocks to `table` until it holds `tokens` positions.
  void Reserve(BlockTable& table, int64_t tokens);
  // Returns blocks to the free list; KVF_ERR_INVALID_ARGUMENT for an id out of range or already free
  // (checked before anything is freed).
  void Free(const std::vector<int32_t>& blocks);
  // Marks specific blocks as in use (e.g. blocks another process wrote into by RDMA, whose ids the
  // transfer plan chose); KVF_ERR_INVALID_ARGUMENT when one is out of range or not free.
  void Claim(const std::vector<int32_t>& blocks);
  bool IsFree(int32_t block) const;

  // Throws KVF_ERR_INVALID_ARGUMENT when a table entry is outside the pool.
  void CheckTable(const BlockTable& table) const;

 private:
  KvLayout layout_;
  uint8_t* base_;
  int64_t num_blocks_;
  std::vector<int32_t> free_;     // LIFO free list
  std::vector<uint8_t> is_free_;  // per block
};

}  // namespace kvf::engine
