// A rail is one FI_EP_RDM endpoint with its own fabric, domain, completion queue and address vector,
// driven by one progress thread. Only that thread posts operations and reads the CQ, so the data path
// needs no locks beyond the submission queue; manual-progress providers (tcp;ofi_rxm, shm) get the
// progress they need, also as a passive target of RMA. Beside it, the express lane: a second endpoint
// that only the posting thread posts on and reaps (see PostExpress).
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/transfer.h"

namespace kvf {

class RailOwner {
 public:
  virtual ~RailOwner() = default;
  // Called on the rail's thread for every finished tx op; `error` is null on success.
  virtual void OnOpComplete(Op* op, const ErrorInfo* error) = 0;
  // Called on the rail's thread for every received control message.
  virtual void OnMessage(const uint8_t* data, size_t length) = 0;
  // Called on the rail's thread when the provider has accepted an op, with the time its post call took
  // (posting-cost telemetry).
  virtual void OnOpPosted(Op* op, int64_t call_ns) = 0;
  // Whether the thread that posts is spinning for completions right now (read on the rail's thread, relaxed).
  virtual bool owner_spinning() const = 0;
};

// Where registered memory lives when it is not host memory: libfabric's FI_HMEM interface and device ordinal.
// FI_HMEM_SYSTEM with the rails opened for FI_HMEM is host memory standing in for a device (tests, CI).
struct HmemTarget {
  fi_hmem_iface iface = FI_HMEM_SYSTEM;
  int device = 0;
};

struct RailMr {
  fid_mr* mr = nullptr;
  void* desc = nullptr;
  uint64_t key = 0;
};

class Rail {
 public:
  // Takes ownership of `info`. `receive_buffer_size` > 0 pre-posts that many-byte receives for control
  // messages (rail 0 only). `busy_poll` > 0: after its endpoint wakes up, for serving a peer's one-sided
  // operation as much as for its own completions, the progress thread keeps polling this long instead of
  // sleeping, so the next requests of a burst pay no wake-up; costs a core while traffic lasts. Needs a CQ
  // wait descriptor (tcp, efa); shm always polls anyway.
  Rail(uint32_t index, fi_info* info, RailOwner* owner, size_t receive_buffer_size,
       std::chrono::microseconds busy_poll);
  ~Rail();
  Rail(const Rail&) = delete;
  Rail& operator=(const Rail&) = delete;

  void Start();
  // Graceful: exit once submitted work has drained. Forced: exit now, failing queued ops with KVF_ERR_CLOSED.
  void RequestStop(bool force);
  void Join();
  // Joins within `timeout`; a thread stuck inside the provider (shm spinning on a lock a killed peer held)
  // is detached instead and the rail orphaned: it never calls its owner again. Returns false then, and the
  // caller must leak the rail, since that thread may still be inside its endpoint.
  bool JoinWithin(std::chrono::milliseconds timeout);
  // Before CloseEndpoint, with the thread joined: makes closing the endpoint safe where the provider needs it.
  // libfabric before 1.18, tcp provider: an endpoint closed (or dropped) while a READ's response is arriving
  // completes that READ twice, the second time as a freed entry with a null context, on which ofi_rxm
  // dereferences null (a SIGSEGV inside fi_close; fixed upstream by ofiwg/libfabric a74ea0fcd, "prov/tcp:
  // Suspicion of bug where RX entry is freed twice"). So the endpoints (the rail's and the express lane's) are
  // driven here, their completions read and dropped (the owner abandons those transfers), until none of our
  // READs is in flight, or until `deadline`. Returns false if READs are still in flight then: the endpoint
  // must not be closed, and the caller leaks the rail (and its MRs). Nothing touches a leaked endpoint's buffers
  // afterwards: its progress is manual (checked here), and nobody drives it any more.
  bool Quiesce(std::chrono::steady_clock::time_point deadline);
  // Closes the endpoint (after Join, and Quiesce): no provider code touches our buffers or op contexts afterwards.
  void CloseEndpoint();

  uint32_t index() const { return index_; }
  const fi_info* info() const { return info_; }
  const std::vector<uint8_t>& address() const { return address_; }
  size_t tx_depth() const { return tx_depth_; }
  size_t max_msg_size() const { return max_msg_size_; }
  bool needs_local_mr() const { return (info_->domain_attr->mr_mode & FI_MR_LOCAL) != 0; }
  bool virt_addr() const { return (info_->domain_attr->mr_mode & FI_MR_VIRT_ADDR) != 0; }

  // `remote_flags`: the FI_REMOTE_READ / FI_REMOTE_WRITE bits a peer gets; 0 registers for local use only, and
  // the provider itself refuses a peer's access, whatever key it presents (a grant passes exactly one flag).
  // Where the provider lets the user pick keys (no FI_MR_PROV_KEY, tcp and shm), the key requested is random
  // (RandomKey), so that it cannot be guessed from the region id.
  // `local` false: never a local buffer of our own ops (a grant), so no FI_READ/WRITE/SEND/RECV either: rxm adds
  // FI_REMOTE_READ to registrations that may be sent from (its rendezvous protocol reads them).
  // `hmem`: device memory, registered with fi_mr_regattr and its interface (the rails must have FI_HMEM).
  RailMr RegisterMemory(void* data, size_t length, uint64_t remote_flags, bool local = true,
                        const HmemTarget* hmem = nullptr);
  bool provider_keys() const { return (info_->domain_attr->mr_mode & FI_MR_PROV_KEY) != 0; }
  static void CloseMr(RailMr& mr);
  fi_addr_t InsertAddress(const uint8_t* address, size_t length);

  // Thread-safe: queue ops for the progress thread and wake it.
  void Submit(Op* const* ops, size_t count);
  void Submit(Op* op) { Submit(&op, 1); }

  // The express lane: a second endpoint with its own CQ (and, where no local MRs are needed, its own fabric,
  // domain and a mirrored address vector) that the posting thread posts on and reaps itself. Small transfers
  // skip both thread hand-offs (poster → progress thread, progress thread → event loop), which is most of their
  // latency; the progress thread never touches it. Opened on first use. PostExpress returns 0 (posted),
  // kExpressQueued (waiting for room; ReapExpress posts it) or a negative code, after which the op must go
  // through Submit instead (closed, no express lane on this provider, or the provider refused it).
  static constexpr int kExpressQueued = 1;
  int PostExpress(Op* op);
  // Reads the express CQ once (which also drives the provider's progress for it), completes what it
  // finds through the owner and posts what waits in the backlog; returns the express ops still in flight.
  size_t ReapExpress();

 private:
  static constexpr size_t kCqBatch = 64;  // completions taken per CQ read, the rail's and the express lane's
  static void CloseFid(fid_t f);          // fi_close, skipping null
  void Run();
  void RunLoop();
  int Post(fid_ep* ep, Op* op);
  // The express lane (rail_express.cc).
  bool OpenExpress();
  int MirrorAddress(size_t index);
  void CloseExpressFids();
  void CloseExpress();
  void PostReceive(size_t slot);
  void HandleCompletion(const fi_cq_data_entry& entry);
  void HandleCqError();
  // Handles what a CQ read returned (completions or an error entry); true if there was anything.
  bool HandleRead(ssize_t n, const fi_cq_data_entry* entries);
  // An op accepted by the provider, and one whose completion (or error) has been read (progress thread).
  void Posted(const Op* op);
  void Retired(const Op* op);
  // Quiesce: reads `cq` once, dropping what it finds; returns the READs of ours among them.
  static size_t DropCompletions(fid_cq* cq);
  // What ended an idle wait: nothing (timeout), the endpoint waking without a completion, or completions.
  enum class IdleEnd { kNothing, kEndpoint, kCompletion };
  IdleEnd WaitIdle();
  bool PollWaitFd(int timeout_ms);
  void Wake();

  // Recovery from a dropped connection (rail_recovery.cc). tcp;ofi_rxm drops the whole connection when the
  // target refuses one operation (a bad key, a region no longer registered), failing every other operation
  // in flight on it. Those are retried here, one at a time, once the rail's ops have drained: the ones that
  // succeed alone complete as if nothing happened, the one that keeps failing alone fails by itself.
  bool Suspect(Op* op, int err);  // true: `op` failed with its connection and will be retried
  bool Recovering() const { return probing_ != nullptr || !suspects_.empty(); }
  void DriveRecovery();
  void ProbeFailed(Op* op, const ErrorInfo& error);
  void ProbeSucceeded(Op* op);
  void FailSuspects(const ErrorInfo& error);

  uint32_t index_;
  fi_info* info_;
  RailOwner* owner_;
  fid_fabric* fabric_ = nullptr;
  fid_domain* domain_ = nullptr;
  fid_cq* cq_ = nullptr;
  fid_av* av_ = nullptr;
  fid_ep* ep_ = nullptr;
  bool cq_can_wait_ = false;
  std::chrono::microseconds busy_poll_;
  int wait_fd_ = -1;  // the CQ's wait descriptor, when busy polling (WaitIdle polls it instead of fi_cq_sread)
  std::vector<uint8_t> address_;
  size_t tx_depth_ = 0;
  size_t max_msg_size_ = 0;

  // Control-message receives (rail 0): one contiguous buffer cut into slots, each with its own context.
  size_t receive_size_ = 0;
  std::vector<uint8_t> receive_buffer_;
  RailMr receive_mr_;
  std::vector<Op> receive_ops_;

  std::mutex queue_mu_;
  std::deque<Op*> queue_;
  std::atomic<bool> sleeping_{false};  // in WaitIdle (or about to be): Submit must signal the CQ
  std::atomic<bool> stop_{false};
  std::atomic<bool> force_{false};
  std::atomic<bool> orphaned_{false};
  std::mutex exit_mu_;
  std::condition_variable exit_cv_;
  bool exited_ = false;
  std::thread thread_;
  size_t inflight_ = 0;  // progress thread only
  // READs among them (the progress thread's, then Quiesce's once it has been joined).
  size_t reads_inflight_ = 0;
  // Closing with a READ in flight may crash the provider (see Quiesce): libfabric < 1.18, tcp.
  bool reads_block_close_ = false;

  std::mutex express_mu_;                 // express posts and reaps against closing (from the closer thread)
  fid_fabric* express_fabric_ = nullptr;  // own fabric, domain and AV unless local MRs are needed
  fid_domain* express_domain_ = nullptr;
  fid_av* express_av_ = nullptr;
  fid_ep* express_ep_ = nullptr;
  fid_cq* express_cq_ = nullptr;
  std::vector<std::vector<uint8_t>> inserted_;  // every address put in av_, in order
  bool express_closed_ = false;
  // Recovery (progress thread only, see Suspect()).
  bool retry_dropped_ = false;  // the provider drops connections on a refused op (tcp)
  std::deque<Op*> suspects_;    // failed with their connection, waiting to be retried alone
  Op* probing_ = nullptr;       // the suspect being retried (alone on the rail)
  bool probe_posted_ = false;
  int probe_attempts_ = 0;
  int failed_alone_ = 0;        // suspects that failed alone since the last success
  bool recovered_any_ = false;  // an op succeeded since recovery began: the peer is reachable
  std::chrono::steady_clock::time_point next_probe_{};
  std::deque<Op*> express_backlog_;          // refused with -FI_EAGAIN, posted by ReapExpress in order
  std::atomic<size_t> express_inflight_{0};  // posted or in the backlog
  size_t express_reads_ = 0;                 // READs posted on the express lane, not yet reaped (express_mu_)
};

}  // namespace kvf
