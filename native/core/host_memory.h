// Addon-allocated host memory: page-aligned, optionally backed by 2 MiB hugepages, suitable for
// registration with any provider (FI_MR_ALLOCATED wants memory the process really owns).
#pragma once

#include <cstddef>

namespace kvf {

struct HostAllocation {
  void* data = nullptr;
  size_t length = 0;     // usable bytes requested by the caller
  size_t mapped = 0;     // bytes actually mapped (rounded to the page size)
  bool hugepages = false;
};

// Throws kvf::Error KVF_ERR_ALLOC (with errno text) when neither hugepages (if required) nor normal pages
// can be mapped. `require_hugepages` false means: try hugepages when `hugepages` is set, fall back silently.
HostAllocation AllocateHost(size_t length, bool hugepages, bool require_hugepages);
void FreeHost(const HostAllocation& a);

}  // namespace kvf
