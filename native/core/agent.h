// The transfer agent: rails, registered regions, loaded peers and transfers in flight. Everything here is
// plain C++ (no Node headers). One thread owns the agent (the binding's: the JS thread) and calls it; every
// event goes to the EventSink it was built with (core/event_sink.h).
#pragma once

#include <rdma/fabric.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/cma.h"
#include "core/event_sink.h"
#include "core/host_memory.h"
#include "core/live_agents.h"
#include "core/notification.h"
#include "core/peer.h"
#include "core/rail.h"
#include "core/region.h"
#include "core/region_table.h"
#include "core/remote_region.h"
#include "core/transfer.h"
#include "core/transfer_plan.h"

namespace kvf {

struct AgentOptions {
  std::string name;
  std::string provider;                    // libfabric provider name: "tcp;ofi_rxm", "shm", "efa", ...
  std::string node;                        // source address to bind (tcp), empty for providers that need none
  std::string domain;                      // restrict to one domain (NIC or interface), empty for any
  uint32_t rails = 0;                      // 0: one per distinct domain found (all EFA devices), at least 1
  uint64_t stripe_threshold = 128 * 1024;  // runs this long or longer are split across all rails; 0: never
  // Transfers of at most this many bytes (and few ops, no notification) take the express lane: posted and
  // reaped on the calling thread through ReapExpress(). 0: every transfer goes through the rail threads.
  uint64_t express_max_bytes = 64 * 1024;
  uint32_t busy_poll_us = 0;  // see Rail(): keep polling this long after the endpoint wakes; 0: off, ≤ kMaxBusyPollUs
  // Open the rails with FI_HMEM (and FI_MR_HMEM), so that device memory can be registered with them; the agent
  // fails to open where the provider does not offer it.
  bool hmem = false;
};

// The longest busy polling an agent takes (µs). TypeScript checks options against the same figure
// (MAX_BUSY_POLL_US, src/fabric/config.ts; test/limits.test.ts keeps the two equal).
constexpr uint32_t kMaxBusyPollUs = 10'000'000;

// Loading a peer: its advertised regions and, when its metadata says it runs on this host (same kernel and
// pid namespace), its pid and region table. The table must be confirmed before anything of the peer's
// process is touched; then transfers are checked against it, and the fast path (`fast_path`) may copy
// directly. host_pid 0: another host, the fabric alone.
struct PeerOptions {
  bool virt_addr = false;
  pid_t host_pid = 0;
  TableLocation table;
  bool fast_path = false;
};

// A grant on the owner's side: a sub-range of a region registered again, on every rail, with fresh keys and
// exactly one remote flag, and published in the region table under its own id (agent_grants.cc).
struct GrantRecord {
  uint32_t id = 0;
  uint32_t region = 0;  // the region it is carved from
  uint8_t* data = nullptr;
  uint64_t length = 0;
  uint64_t access = 0;  // kAccessRead or kAccessWrite
  std::vector<RailMr> mrs;
};

// What the owner hands out for a new grant (serialised in TypeScript, src/fabric/grants.ts).
struct GrantInfo {
  uint32_t id = 0;
  uint32_t slot = 0;           // its entry in the region table
  uint64_t base = 0;           // real address of its first byte
  std::vector<uint64_t> keys;  // per rail
  SharedLocation share;        // valid: inside shared memory, which same-host peers may map
};

class Agent final : public RailOwner, public LiveAgent {
 public:
  Agent(const AgentOptions& options, EventSink& sink);  // `sink` must outlive the agent
  ~Agent() override;

  const std::string& name() const { return name_; }
  const std::string& provider() const { return provider_; }
  const std::string& fabric_name() const { return fabric_name_; }
  std::vector<std::string> domain_names() const;
  const std::vector<std::unique_ptr<Rail>>& rails() const { return rails_; }
  uint64_t express_max_bytes() const { return express_max_bytes_; }

  // `remote_access` false: registered without FI_REMOTE_READ/WRITE and never advertised (local use only).
  uint32_t RegisterMemory(void* data, size_t length, bool remote_access = true);
  // Device memory registered with every rail through FI_HMEM (the rails must have been opened with `hmem`).
  uint32_t RegisterDeviceMemory(void* data, size_t length, const HmemTarget& target, bool remote_access);
  bool hmem() const { return hmem_; }
  void DeregisterMemory(uint32_t id);
  std::vector<const Region*> ListRegions() const;
  // Grants (agent_grants.cc): scoped, revocable remote access to [offset, offset + length) of a region, read or
  // write only. Revoke clears the table entry, then closes the MRs; false when already revoked (or unknown).
  GrantInfo Grant(uint32_t region, uint64_t offset, uint64_t length, uint64_t access);
  bool Revoke(uint32_t grant);
  size_t live_grants() const;
  // A peer's grant, as a remote region of that peer under the grant's id (same-host: checked in its table).
  void AddGrant(uint32_t peer, uint32_t grant, RemoteRegion region);
  void RemoveGrant(uint32_t peer, uint32_t grant);
  // Where same-host peers find this agent's region table (fd -1: none could be created).
  TableLocation table_location() const { return table_ ? table_->location() : TableLocation{}; }

  uint32_t AddPeer(const std::string& name, const PeerOptions& options,
                   const std::vector<std::vector<uint8_t>>& addresses, std::map<uint32_t, RemoteRegion> regions);
  const Peer& PeerById(uint32_t id) { return PeerOrThrow(id); }
  void RemovePeer(uint32_t id);

  // Validates every descriptor, then posts. Throws kvf::Error before anything is posted.
  uint64_t PostTransfer(OpKind kind, uint32_t peer, const Descriptor* descriptors, size_t count,
                        const uint8_t* notification, size_t notification_length, bool has_notification);
  uint64_t PostNotification(uint32_t peer, const uint8_t* data, size_t length);

  // Prepared lists: validate once, post many times (all descriptors or a selection by index).
  uint32_t Prepare(uint32_t peer, const Descriptor* descriptors, size_t count);
  void ReleasePrepared(uint32_t id);
  const PreparedList& PreparedOrThrow(uint32_t id) const;
  uint64_t PostPrepared(OpKind kind, uint32_t list, const uint32_t* indices, size_t count, const uint8_t* notification,
                        size_t notification_length, bool has_notification);
  // Connects every rail to the peer ahead of the first transfer (a 1-byte READ per rail).
  uint64_t Warmup(uint32_t peer);

  // Graceful close: refuse new work, let transfers drain for up to `timeout_ms`, then close everything and
  // emit a kClosed event. Forced close: synchronous, for destructors and env teardown.
  void BeginClose(uint32_t timeout_ms);
  void CloseNow();
  // Stops and joins the rail threads without releasing anything (first phase of closing at process exit).
  void HaltRails() override;
  bool closing() const { return state_ >= State::kDraining; }
  bool closed() const { return state_ == State::kClosed; }
  bool RunningOnShm() const override { return provider_ == "shm" && !closed(); }

  // Express lane (calling thread = the one that posts): reads every rail's express CQ once and completes
  // what it finds, pushing its events from this thread. Returns the express ops still in flight.
  size_t ReapExpress();
  // Small transfers in flight on the rail threads (express-sized, not express: every transfer on shm), which
  // an owner thread may spin for rather than wait to be woken (the binding's reap(); docs/design.md, "The
  // express lane").
  size_t awaited_in_flight() const { return awaited_in_flight_; }

  size_t transfers_in_flight();

  // RailOwner
  void OnOpComplete(Op* op, const ErrorInfo* error) override { OnPartDone(op->transfer, error); }
  void OnMessage(const uint8_t* data, size_t length) override;
  void OnOpPosted(Op* op, int64_t call_ns) override;
  bool owner_spinning() const override { return sink_.OwnerSpinning(); }

 private:
  // Lifecycle, in order: each state implies the ones before it (closing refuses new work, halting stops waiting
  // for transfers to drain and posts no more notifications).
  enum class State : uint8_t {
    kOpen,
    kDraining,  // BeginClose: new work refused, transfers in flight get up to the timeout
    kHalting,   // forced: rails stopping or stopped, endpoints not yet closed
    kClosed,    // Shutdown ran: everything released, kClosed pushed
  };
  // Moves the state forward to at least `to`; returns the state before.
  State Advance(State to);
  bool halting() const { return state_ >= State::kHalting; }

  // One part of a transfer is done: a fabric op (from a rail thread or the posting thread) or a copy (from a
  // copier thread or the posting thread). `error` null on success. The last part moves the transfer on.
  void OnPartDone(Transfer* t, const ErrorInfo* error);
  PreparedList Resolve(uint32_t peer, const Descriptor* descriptors, size_t count);
  // Posting a prepared list (agent_post.cc), in order: the selection's bytes and overlaps, the notification,
  // the local regions pinned, then the copy or the fabric ops.
  uint64_t Submit(OpKind kind, const PreparedList& list, const uint32_t* indices, size_t count,
                  const uint8_t* notification, size_t notification_length, bool has_notification);
  uint64_t SelectedBytes(OpKind kind, const PreparedList& list, const uint32_t* indices, size_t count) const;
  // Encodes the message and builds the SEND that carries it to `peer` once the data has arrived.
  void AttachNotification(Transfer& t, const Peer& peer, const uint8_t* data, size_t length) const;
  void PinRegions(Transfer& t, const PreparedList& list);
  uint64_t LaunchFabric(std::unique_ptr<Transfer> t, const Peer& peer, const PreparedList& list,
                        const uint32_t* indices, size_t count);
  Transfer* Track(std::unique_ptr<Transfer> t);
  uint64_t Launch(std::unique_ptr<Transfer> t);
  uint64_t LaunchCopy(std::unique_ptr<Transfer> t, const Peer& peer, const PreparedList& list, const uint32_t* indices,
                      size_t count);
  // Every data op (or the copy) of `t` is done: post its notification, or finish it.
  void DataDone(Transfer* t, bool failed);
  void OpenRails(const AgentOptions& options);
  void Finish(Transfer* transfer);
  void Shutdown();
  void StopRails();
  Peer& PeerOrThrow(uint32_t id);
  // Same-host peer: maps the regions it shares (memfd memory) so that copies to them are memcpys.
  void MapSharedRegions(Peer& peer, std::map<uint32_t, RemoteRegion>& regions);

  std::string name_;
  std::string provider_;
  std::string fabric_name_;
  EventSink& sink_;
  std::vector<std::unique_ptr<Rail>> rails_;

  // Checks that the selected remote regions allow `kind` and are still advertised in a same-host peer's table.
  void CheckAdvertised(const Peer& peer, OpKind kind, const PreparedList& list, const uint32_t* indices,
                       size_t count) const;
  // A fresh region or grant id whose table slot is free (regions_mu_ held); KVF_ERR_TOO_LARGE when the table is full.
  uint32_t NextTableIdLocked();
  // Clears the grant's table entry, then closes its MRs (regions_mu_ held).
  void RevokeLocked(std::map<uint32_t, GrantRecord>::iterator it);

  std::unique_ptr<RegionTable> table_;  // written under regions_mu_
  mutable std::mutex regions_mu_;
  std::map<uint32_t, std::unique_ptr<Region>> regions_;
  std::map<uint32_t, GrantRecord> grants_;  // under regions_mu_; ids share the regions' id space (table slots)
  uint32_t next_region_ = 1;

  std::map<uint32_t, Peer> peers_;  // owner thread only
  uint32_t next_peer_ = 1;
  std::map<uint32_t, std::unique_ptr<PreparedList>> prepared_;  // owner thread only
  uint32_t next_prepared_ = 1;
  uint64_t stripe_threshold_ = 0;
  uint32_t AddRegion(void* data, size_t length, bool remote_access, const HmemTarget* hmem);
  uint64_t express_max_bytes_ = 0;  // the fabric's express lane (0 on shm)
  bool hmem_ = false;               // rails opened with FI_HMEM (AgentOptions::hmem)
  // Transfers this small are latency work (expressMaxBytes as asked, also on shm): same-host copies run on the
  // calling thread, and the owner thread may spin for one a rail thread carries (awaited_in_flight).
  uint64_t small_max_bytes_ = 0;
  std::mutex express_mu_;     // ReapExpress (owner thread) against Shutdown tearing the rails down
  bool express_off_ = false;  // set by Shutdown: no more reaping
  std::atomic<size_t> awaited_in_flight_{0};
  uint32_t scratch_region_ = 0;  // target of warmup reads
  std::vector<uint8_t> scratch_;
  CmaCopier copier_{[this](Transfer* t, const ErrorInfo* error) { OnPartDone(t, error); },
                    std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 4)};

  std::mutex transfers_mu_;
  std::condition_variable transfers_cv_;
  std::map<uint64_t, std::unique_ptr<Transfer>> transfers_;
  uint64_t next_transfer_ = 1;
  uint32_t next_rail_ = 0;  // round-robin position (owner thread only)

  std::atomic<State> state_{State::kOpen};
  std::mutex close_mu_;  // BeginClose, CloseNow and HaltRails against each other (closer_)
  std::thread closer_;
  std::set<uint32_t> leaked_rails_;  // rails given up on in StopRails (their MRs stay open too)
};

}  // namespace kvf
