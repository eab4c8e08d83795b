// Turning validated descriptors into libfabric ops. A descriptor list is validated once (Agent::Prepare or
// per transfer) into a PreparedList; posting it plans ops: contiguous descriptors merge into one run, runs at
// or above the stripe threshold are cut into one piece per rail so every NIC carries a share, smaller runs
// go to the rails round-robin, and every piece is split at the provider's maximum message size.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/transfer.h"

namespace kvf {

struct Region;
struct RemoteRegion;
struct Peer;

struct PreparedItem {
  Region* local = nullptr;
  uint64_t local_offset = 0;
  uint32_t remote_id = 0;
  const RemoteRegion* remote = nullptr;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

struct PreparedList {
  uint32_t peer = 0;
  // Distinct local regions, re-checked at every post: a region deregistered since is an error, not a use
  // after free.
  std::vector<std::pair<uint32_t, Region*>> regions;
  // Distinct remote regions: a same-host peer's are checked against its region table at every post.
  std::vector<std::pair<uint32_t, const RemoteRegion*>> remote_regions;
  std::vector<PreparedItem> items;
  uint64_t bytes = 0;
  bool device = false;  // a local or remote region is device memory: fabric ops only (Region::device)
  // Non-empty when destinations overlap for that direction: the error to report when posting it whole.
  std::string read_overlap;   // local ranges overlap
  std::string write_overlap;  // remote ranges overlap
};

// Which destination ranges of `items` (the selected ones, or all when `indices` is null) overlap; empty when
// none do. For READ the destinations are local ranges, for WRITE remote ones.
std::string FindOverlap(OpKind kind, const std::vector<PreparedItem>& items, const uint32_t* indices, size_t count);

// A run of consecutive selected items that continue each other on both sides (merged descriptors).
struct Run {
  const PreparedItem* first;
  uint64_t local_offset, remote_offset, length;
};

std::vector<Run> MergeRuns(const PreparedList& list, const uint32_t* indices, size_t count);

struct RailPlan {
  size_t rails = 1;
  size_t remote_rails = 1;
  uint64_t max_msg = 0;
  uint64_t stripe_threshold = 0;  // 0: never stripe
  uint32_t next_rail = 0;         // round-robin position; advanced by PlanOps
};

// Fills t.ops (and t.rails_mask) for the selected items in selection order.
void PlanOps(Transfer& t, OpKind kind, const Peer& peer, const PreparedList& list, const uint32_t* indices,
             size_t count, RailPlan& plan);

}  // namespace kvf
