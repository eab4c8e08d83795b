// Addon-allocated host memory: page-aligned, optionally backed by 2 MiB hugepages, suitable for
// registration with any provider (FI_MR_ALLOCATED wants memory the process really owns).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvf {

struct HostAllocation {
  void* data = nullptr;
  size_t length = 0;  // usable bytes requested by the caller
  size_t mapped = 0;  // bytes actually mapped (rounded to the page size)
  bool hugepages = false;
  int fd = -1;  // shared: the memfd behind the mapping, open for as long as the memory lives
};

// Whether memory is a memfd mapping that same-host peers can map too (FindShared) instead of private anonymous
// memory. kAuto: only where that costs no speed, i.e. where the shared memory is hugepages too: reserved ones
// (when `hugepages` is asked and they are there), or transparent ones (SharedHugepagesAvailable). On 4 KiB
// pages, large copies out of it are slower than out of private transparent hugepages (docs/design.md,
// "Same-host fast path").
enum class Share { kNo, kYes, kAuto };

// Throws kvf::Error KVF_ERR_ALLOC (with errno text) when neither hugepages (if required) nor normal pages
// can be mapped. `require_hugepages` false means: try hugepages when `hugepages` is set, fall back silently.
HostAllocation AllocateHost(size_t length, bool hugepages, bool require_hugepages, Share share);
void FreeHost(const HostAllocation& a);

// Where a same-host peer finds shared memory: /proc/<our pid>/fd/<fd>, checked against the inode (an fd
// number can be reused), at `offset` into the file.
struct SharedLocation {
  int fd = -1;  // -1: not shared
  uint64_t inode = 0;
  uint64_t offset = 0;
  bool valid() const { return fd >= 0; }
};

// The shared allocation that holds [data, data + length) whole, if any.
bool FindShared(const void* data, size_t length, SharedLocation* out);

// Whether the kernel backs shared memory (shmem) with transparent hugepages when asked (MADV_HUGEPAGE):
// /sys/kernel/mm/transparent_hugepage/shmem_enabled is not "never" or "deny".
bool SharedHugepagesAvailable();

}  // namespace kvf
