// The same-host mapped path: a peer's shared regions (memfd memory, see host_memory.h) mapped into this
// process, so that a transfer is one memcpy on the posting thread or a copier thread, with no system call
// per transfer beyond a liveness check. Cross-memory attach costs kernel work (page pinning) on every call,
// many times a small memcpy (figures: docs/design.md, "Same-host fast path").
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/host_memory.h"

namespace kvf {

// A peer region mapped here; unmapped when the last transfer holding it has finished.
class PeerMapping {
 public:
  PeerMapping(void* map_base, size_t map_length, uint8_t* region)
      : map_base_(map_base), map_length_(map_length), region_(region) {}
  ~PeerMapping();
  PeerMapping(const PeerMapping&) = delete;
  PeerMapping& operator=(const PeerMapping&) = delete;
  uint8_t* region() const { return region_; }

 private:
  void* map_base_;
  size_t map_length_;
  uint8_t* region_;
};

// Maps `length` bytes of the peer's shared memory at `where` (opened through /proc/<pid>/fd, checked to be
// the same inode). Returns null and says why when the kernel or the checks refuse.
std::shared_ptr<PeerMapping> MapPeerRegion(pid_t pid, const SharedLocation& where, uint64_t length, std::string* why);

// A handle on the peer process (a pidfd) that tells whether it has exited: a mapping outlives its owner,
// so a copy through it would "succeed" against a dead peer without this check. The check is a poll(),
// dearer than a small copy (docs/design.md, "Same-host fast path"), so a peer seen alive counts as alive for
// kFreshFor: a copy that ends that soon after the peer's death is reported as done, as if it had died a moment later.
class ProcessWatch {
 public:
  static constexpr std::chrono::microseconds kFreshFor{100};
  explicit ProcessWatch(int pidfd) : pidfd_(pidfd) {}
  ~ProcessWatch();
  ProcessWatch(const ProcessWatch&) = delete;
  ProcessWatch& operator=(const ProcessWatch&) = delete;
  bool Gone();

 private:
  int pidfd_;
  std::atomic<int64_t> alive_at_ns_{0};  // steady clock, when last seen alive
};

std::shared_ptr<ProcessWatch> WatchProcess(pid_t pid, std::string* why);

}  // namespace kvf
