// A region (or grant) a peer advertises: what descriptors name as their remote side.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/host_memory.h"
#include "core/peer_map.h"
#include "core/region_table.h"

namespace kvf {

struct RemoteRegion {
  uint64_t base = 0;  // added to offsets on FI_MR_VIRT_ADDR providers
  uint64_t length = 0;
  // What this side believes it may do (kAccessRead/kAccessWrite): both for advertised regions, one for a grant.
  // Checked before posting; the owner's provider (its MR flags) and table are what enforce it.
  uint64_t access = kAccessRead | kAccessWrite;
  std::vector<uint64_t> keys;            // per remote rail
  bool device = false;                   // the peer's device memory (FI_HMEM): the fabric alone may move it
  SharedLocation share;                  // valid: the peer says it can be mapped, and where
  std::shared_ptr<PeerMapping> mapping;  // mapped here (same-host peer): transfers copy with memcpy
};

}  // namespace kvf
