// Paged KV pool: layout offsets, block allocation, and the coded errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "engine/kv_cache.h"
#include "test_util.h"

namespace kvf::engine {
namespace {

using testing::ThrownCode;

KvLayout Layout(KvDtype dt = KvDtype::F16) {
  KvLayout l;
  l.num_layers = 3;
  l.num_kv_heads = 2;
  l.head_dim = 8;
  l.tokens_per_block = 4;
  l.dtype = dt;
  return l;
}

TEST(KvLayout, Offsets) {
  const KvLayout l = Layout();
  EXPECT_EQ(l.section_bytes(), 2u * 4 * 8 * 2);
  EXPECT_EQ(l.block_bytes(), 3u * 2 * l.section_bytes());
  EXPECT_EQ(l.Offset(0, 0, 0), 0u);
  EXPECT_EQ(l.Offset(0, 0, 1), l.section_bytes());
  EXPECT_EQ(l.Offset(0, 1, 0), 2 * l.section_bytes());
  EXPECT_EQ(l.Offset(5, 2, 1), 5 * l.block_bytes() + 5 * l.section_bytes());
  EXPECT_EQ(l.BlocksFor(0), 0);
  EXPECT_EQ(l.BlocksFor(4), 1);
  EXPECT_EQ(l.BlocksFor(5), 2);
  const KvLayout f = Layout(KvDtype::F32);
  EXPECT_EQ(f.section_bytes(), 2 * l.section_bytes());
  KvLayout bad = l;
  bad.tokens_per_block = 0;
  EXPECT_EQ(ThrownCode([&] { bad.Validate(); }), "KVF_ERR_INVALID_ARGUMENT");
}

TEST(KvPool, AllocateFreeClaim) {
  const KvLayout l = Layout();
  std::vector<uint8_t> mem(4 * l.block_bytes() + 7);  // the remainder is not a block
  KvPool pool(l, mem.data(), mem.size());
  EXPECT_EQ(pool.num_blocks(), 4);
  EXPECT_EQ(pool.Section(2, 1, 1), mem.data() + l.Offset(2, 1, 1));
  EXPECT_EQ(ThrownCode([&] { pool.Section(4, 0, 0); }), "KVF_ERR_INVALID_ARGUMENT");

  std::vector<int32_t> a = pool.Allocate(3);
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(pool.free_blocks(), 1);
  EXPECT_EQ(ThrownCode([&] { pool.Allocate(2); }), "KVF_ERR_POOL_EXHAUSTED");
  EXPECT_EQ(pool.free_blocks(), 1);  // all or nothing
  BlockTable t;
  EXPECT_EQ(ThrownCode([&] { pool.Reserve(t, 9); }), "KVF_ERR_POOL_EXHAUSTED");
  EXPECT_TRUE(t.empty());
  pool.Reserve(t, 3);
  EXPECT_EQ(t, (BlockTable{3}));
  EXPECT_EQ(ThrownCode([&] { pool.Allocate(1); }), "KVF_ERR_POOL_EXHAUSTED");

  EXPECT_EQ(ThrownCode([&] { pool.Free({1, 1}); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { pool.Free({9}); }), "KVF_ERR_INVALID_ARGUMENT");
  pool.Free({1, 3});
  EXPECT_EQ(pool.free_blocks(), 2);
  EXPECT_EQ(ThrownCode([&] { pool.Free({3}); }), "KVF_ERR_INVALID_ARGUMENT");  // already free
  EXPECT_EQ(ThrownCode([&] { pool.Claim({0}); }), "KVF_ERR_INVALID_ARGUMENT");  // in use
  pool.Claim({3});
  EXPECT_EQ(pool.Allocate(1), (std::vector<int32_t>{1}));
  EXPECT_EQ(pool.free_blocks(), 0);

  EXPECT_EQ(ThrownCode([&] { pool.CheckTable({0, 4}); }), "KVF_ERR_INVALID_ARGUMENT");
  EXPECT_EQ(ThrownCode([&] { KvPool tiny(l, mem.data(), l.block_bytes() - 1); }), "KVF_ERR_INVALID_ARGUMENT");
}

}  // namespace
}  // namespace kvf::engine
