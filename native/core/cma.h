// The same-host fast path: cross-memory attach (process_vm_readv / process_vm_writev) copies straight
// between this process and a peer process on the same machine, one copy, no provider, no bounce buffer.
// Jobs run on the agent's copier threads, so the posting thread never blocks on a copy; completions go back to
// the agent like fabric completions do. One thread copies at ~half of memcpy speed (the kernel pins every
// page before copying it), so large transfers are cut into parts copied in parallel.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/peer_map.h"
#include "core/region_table.h"
#include "core/transfer.h"

namespace kvf {

struct CmaJob {
  Transfer* transfer = nullptr;
  pid_t pid = 0;
  bool write = false;
  // Equal-length pairs: local[i] and remote[i] have the same iov_len.
  std::vector<iovec> local;
  std::vector<iovec> remote;
  // Mapped: `remote` points into mappings of the peer's shared memory here (see peer_map.h), copied with
  // memcpy; `keep` holds those mappings until the copy is done, `watch` tells whether the peer still lives.
  bool mapped = false;
  std::vector<std::shared_ptr<PeerMapping>> keep;
  std::shared_ptr<ProcessWatch> watch;
  // The peer's region table and the regions the job touches: each must still be advertised when the copy
  // starts (KVF_ERR_REMOTE_ACCESS otherwise). A same-host job always has a table (see Agent::AddPeer).
  struct RegionCheck {
    uint32_t id;
    uint64_t base, length;
  };
  std::shared_ptr<PeerRegionTable> table;
  std::vector<RegionCheck> checks;
};

// Copies `job` now, on the calling thread; returns an error (KVF_ERR_FAST_PATH) on failure.
ErrorInfo CmaCopy(CmaJob& job);

// Cuts `job` into at most `parts` jobs of about equal bytes (none under `min_bytes`), in order.
std::vector<CmaJob> SplitCmaJob(CmaJob job, size_t parts, size_t min_bytes);

// Whether this process may read `length` bytes at `address` of process `pid` ("" when yes, else why not).
std::string CmaProbe(pid_t pid, uint64_t address, size_t length);

class CmaCopier {
 public:
  using Done = std::function<void(Transfer*, const ErrorInfo*)>;
  CmaCopier(Done done, size_t threads) : done_(std::move(done)), threads_(threads) {}
  size_t threads() const { return threads_; }
  ~CmaCopier() { Stop(); }
  CmaCopier(const CmaCopier&) = delete;
  CmaCopier& operator=(const CmaCopier&) = delete;

  void Submit(CmaJob job);
  // Finishes the job being copied, fails the queued ones with KVF_ERR_CLOSED, joins the thread.
  void Stop();

 private:
  void Run();

  Done done_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<CmaJob> queue_;
  bool stop_ = false;
  size_t threads_;
  std::vector<std::thread> workers_;
};

}  // namespace kvf
