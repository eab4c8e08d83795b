#include "engine/kv_cache.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"

namespace kvf::engine {

void KvLayout::Validate() const {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0 || tokens_per_block <= 0 ||
      (dtype != KvDtype::F16 && dtype != KvDtype::F32))
    throw Error(code::kInvalidArgument, "bad KV layout: layers " + std::to_string(num_layers) + ", kv heads " +
                                            std::to_string(num_kv_heads) + ", head dim " + std::to_string(head_dim) +
                                            ", tokens per block " + std::to_string(tokens_per_block));
}

size_t KvLayout::section_bytes() const {
  return static_cast<size_t>(num_kv_heads) * static_cast<size_t>(tokens_per_block) * static_cast<size_t>(head_dim) *
         elem_bytes();
}

size_t KvLayout::block_bytes() const { return static_cast<size_t>(num_layers) * 2 * section_bytes(); }

size_t KvLayout::Offset(int64_t block, int layer, int kv) const {
  return static_cast<size_t>(block) * block_bytes() +
         (static_cast<size_t>(layer) * 2 + static_cast<size_t>(kv)) * section_bytes();
}

KvPool::KvPool(const KvLayout& layout, void* base, size_t bytes) : layout_(layout), base_(static_cast<uint8_t*>(base)) {
  layout_.Validate();
  num_blocks_ = static_cast<int64_t>(bytes / layout_.block_bytes());
  if (base_ == nullptr || num_blocks_ <= 0)
    throw Error(code::kInvalidArgument, "KV pool memory (" + std::to_string(bytes) + " bytes) holds no block of " +
                                            std::to_string(layout_.block_bytes()) + " bytes");
  if (num_blocks_ > INT32_MAX) num_blocks_ = INT32_MAX;
  free_.reserve(static_cast<size_t>(num_blocks_));
  // Reverse order so that a fresh pool hands out 0, 1, 2, ...
  for (int64_t b = num_blocks_ - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
  is_free_.assign(static_cast<size_t>(num_blocks_), 1);
}

uint8_t* KvPool::Block(int64_t block) const {
  if (block < 0 || block >= num_blocks_)
    throw Error(code::kInvalidArgument,
                "KV block " + std::to_string(block) + " outside the pool of " + std::to_string(num_blocks_));
  return base_ + static_cast<size_t>(block) * layout_.block_bytes();
}

uint8_t* KvPool::Section(int64_t block, int layer, int kv) const {
  if (layer < 0 || layer >= layout_.num_layers || kv < 0 || kv > 1)
    throw Error(code::kInvalidArgument, "KV section layer " + std::to_string(layer) + " kv " + std::to_string(kv));
  return Block(block) + (static_cast<size_t>(layer) * 2 + static_cast<size_t>(kv)) * layout_.section_bytes();
}

std::vector<int32_t> KvPool::Allocate(int64_t count) {
  if (count < 0) throw Error(code::kInvalidArgument, "negative block count");
  if (count > free_blocks())
    throw Error(code::kPoolExhausted, "KV pool exhausted: " + std::to_string(count) + " blocks requested, " +
                                          std::to_string(free_blocks()) + " of " + std::to_string(num_blocks_) +
                                          " free");
  std::vector<int32_t> out(free_.end() - count, free_.end());
  std::reverse(out.begin(), out.end());
  free_.resize(free_.size() - static_cast<size_t>(count));
  for (int32_t b : out) is_free_[static_cast<size_t>(b)] = 0;
  return out;
}

void KvPool::Reserve(BlockTable& table, int64_t tokens) {
  const int64_t need = layout_.BlocksFor(tokens) - static_cast<int64_t>(table.size());
  if (need <= 0) return;
  std::vector<int32_t> more = Allocate(need);
  table.insert(table.end(), more.begin(), more.end());
}

bool KvPool::IsFree(int32_t block) const {
  return block >= 0 && block < num_blocks_ && is_free_[static_cast<size_t>(block)] != 0;
}

void KvPool::Free(const std::vector<int32_t>& blocks) {
  std::vector<int32_t> sorted(blocks);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int32_t b = sorted[i];
    if (b < 0 || b >= num_blocks_ || is_free_[static_cast<size_t>(b)] || (i > 0 && sorted[i - 1] == b))
      throw Error(code::kInvalidArgument, "cannot free KV block " + std::to_string(b) + ": out of range or not in use");
  }
  for (int32_t b : blocks) {
    is_free_[static_cast<size_t>(b)] = 1;
    free_.push_back(b);
  }
}

void KvPool::Claim(const std::vector<int32_t>& blocks) {
  std::vector<int32_t> sorted(blocks);
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    const int32_t b = sorted[i];
    if (!IsFree(b) || (i > 0 && sorted[i - 1] == b))
      throw Error(code::kInvalidArgument, "cannot claim KV block " + std::to_string(b) + ": out of range or in use");
  }
  for (int32_t b : blocks) is_free_[static_cast<size_t>(b)] = 0;
  free_.erase(
      std::remove_if(free_.begin(), free_.end(), [this](int32_t b) { return !is_free_[static_cast<size_t>(b)]; }),
      free_.end());
}

void KvPool::CheckTable(const BlockTable& table) const {
  for (int32_t b : table)
    if (b < 0 || b >= num_blocks_)
      throw Error(code::kInvalidArgument,
                  "block table entry " + std::to_string(b) + " outside the pool of " + std::to_string(num_blocks_));
}

}  // namespace kvf::engine
