// The units of work that cross from the posting thread to the rail progress threads (or the copier threads)
// and back.
#pragma once

#include <rdma/fabric.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"

namespace kvf {

// Rails per agent at most: a transfer's rails_mask has one bit per rail. The metadata TypeScript decodes and
// encodes holds the same limit (METADATA_LIMITS.maxRails, src/fabric/metadata.ts; test/limits.test.ts keeps
// the two equal).
constexpr uint32_t kMaxRails = 64;

enum class OpKind : uint8_t { kWrite, kRead, kSend };

// One descriptor of a transfer: `length` bytes between a local region and a peer's region. The binding turns
// the caller's numbers into these (and rejects what is not a 64-bit integer); the agent checks them against
// its regions and the peer's.
struct Descriptor {
  uint64_t local_region = 0;
  uint64_t local_offset = 0;
  uint64_t remote_region = 0;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

// How a transfer's bytes move. Paths for device memory are to join here.
enum class TransferPath : uint8_t {
  kFabric,  // libfabric ops on the rails
  kCma,     // same-host fast path: cross-memory attach (process_vm_readv / process_vm_writev)
  kMapped,  // same-host fast path through the peer's shared memory mapped here (memcpy)
};

// Where a transfer's completion is picked up (express ops, reaped by the posting thread, say so themselves).
enum class Pickup : uint8_t {
  kWake,    // the completing thread wakes the binding's event loop
  kInline,  // the fast path copied on the posting thread: done before the post returned (reported as express)
  kSpin,    // small, on the rail threads: the posting thread may spin for it (Agent::awaited_in_flight)
};

struct Transfer;
struct Region;

// One libfabric operation. `ctx` must stay the first member: libfabric hands its address back as the
// completion's op_context (FI_CONTEXT2 mode), and we cast it back to the Op.
struct Op {
  fi_context2 ctx{};
  OpKind kind = OpKind::kWrite;
  Transfer* transfer = nullptr;
  void* local = nullptr;
  size_t length = 0;
  void* desc = nullptr;  // local MR descriptor (FI_MR_LOCAL providers)
  fi_addr_t dest = FI_ADDR_UNSPEC;
  uint64_t remote_addr = 0;
  uint64_t remote_key = 0;
  uint32_t rail = 0;
  bool delivery_complete = false;  // data must be visible at the target before the completion
  bool express = false;            // posted and reaped on the posting thread (Rail::PostExpress)
  bool suspect = false;            // failed with its connection: to be retried alone (rail_recovery.cc)
  bool deferred = false;           // failed alone before anything else was retried successfully
};

struct Transfer {
  uint64_t id = 0;
  OpKind kind = OpKind::kWrite;
  std::vector<Op> ops;            // data ops; never resized after posting (Ops are referenced by address)
  std::unique_ptr<Op> notify_op;  // posted only after every data op succeeded
  std::vector<uint8_t> notify_message;
  std::vector<Region*> regions;  // local regions pinned (in-flight counted) by this transfer
  std::atomic<size_t> remaining{0};
  bool notify_posted = false;  // touched only by the thread that drops `remaining` to 0
  std::mutex error_mu;
  ErrorInfo error;
  uint64_t bytes = 0;
  uint64_t rails_mask = 0;
  std::chrono::steady_clock::time_point start;
  std::atomic<size_t> unposted{0};           // data ops not yet accepted by the provider
  std::atomic<int64_t> posted_ns{-1};        // from start until the provider had accepted every data op
  std::atomic<int64_t> provider_post_ns{0};  // time inside the provider's post calls, summed over data ops
  TransferPath path = TransferPath::kFabric;
  Pickup pickup = Pickup::kWake;
  size_t cma_segments = 0;  // same-host paths: the copy's segments (reported as its ops)
};
static_assert(kMaxRails <= sizeof(Transfer::rails_mask) * 8, "rails_mask has a bit for every rail");

struct Event {
  enum class Type : uint8_t { kTransferDone, kNotification, kClosed };
  Type type = Type::kTransferDone;
  uint64_t transfer_id = 0;
  ErrorInfo error;
  uint64_t bytes = 0;
  uint64_t duration_ns = 0;
  uint64_t rails_mask = 0;
  int64_t post_ns = -1;
  int64_t provider_post_ns = 0;
  uint64_t ops = 0;
  TransferPath path = TransferPath::kFabric;
  bool express = false;       // at least one op went by the express lane (or the copy ran inline)
  std::string from;           // notification sender
  std::vector<uint8_t> data;  // notification payload
};

}  // namespace kvf
