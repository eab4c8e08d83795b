// A region of this process's memory registered with every rail: what descriptors name as their local side.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/host_memory.h"
#include "core/rail.h"

namespace kvf {

struct Region {
  uint32_t id = 0;
  uint8_t* data = nullptr;
  size_t length = 0;
  SharedLocation share;     // valid: inside a shared allocation, which same-host peers may map
  std::vector<RailMr> mrs;  // one per local rail
  std::atomic<uint32_t> inflight{0};
  bool internal = false;      // the agent's own scratch memory: never advertised to peers
  bool remote_access = true;  // registered with FI_REMOTE_READ/WRITE and advertised (else local use only)
  // Device memory (or host memory standing in for it) registered through FI_HMEM: only the NIC touches it, so
  // transfers of it take neither the same-host copy nor the express lane, and it is never granted.
  bool device = false;
};

}  // namespace kvf
