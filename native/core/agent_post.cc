// The posting half of Agent: descriptors validated into prepared lists, lists planned into ops (or copies on
// the same-host fast path) and handed to the rails, warmup and notifications. Lifecycle, regions, peers and
// completions are in agent.cc.
#include "core/agent.h"
#include "core/error_codes.h"

#include <algorithm>

namespace kvf {

namespace {

// More ops than this are bandwidth work, better left to the rail threads.
constexpr size_t kExpressMaxOps = 16;
// Selections of up to this many indices are checked for repeats pairwise, larger ones with a bitmap.
constexpr size_t kFewIndices = 32;

}  // namespace

PreparedList Agent::Resolve(uint32_t peer_id, const Descriptor* d, size_t count) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  if (count == 0) throw Error(code::kInvalidArgument, "a transfer needs at least one descriptor");
  PreparedList list;
  list.peer = peer_id;
  list.items.resize(count);
  std::lock_guard<std::mutex> lock(regions_mu_);
  // Regions are looked up by id; descriptors of one list usually name one or two, so cache the last hit.
  const Region* last_local = nullptr;
  for (size_t i = 0; i < count; ++i) {
    const uint64_t lregion = d[i].local_region;
    const uint64_t loff = d[i].local_offset;
    const uint64_t rregion = d[i].remote_region;
    const uint64_t roff = d[i].remote_offset;
    const uint64_t len = d[i].length;
    auto at = [i] { return "descriptor " + std::to_string(i) + ": "; };
    if (len == 0) throw Error(code::kZeroLength, at() + "length is 0");
    Region* local;
    if (last_local != nullptr && last_local->id == lregion) {
      local = const_cast<Region*>(last_local);
    } else {
      auto lit = regions_.find(static_cast<uint32_t>(lregion));
      if (lregion > UINT32_MAX || lit == regions_.end() || lit->second->internal) {
        throw Error(code::kUnknownRegion, at() + "local region " + std::to_string(lregion) + " is not registered");
      }
      local = lit->second.get();
      last_local = local;
      list.device = list.device || local->device;
      if (std::none_of(list.regions.begin(), list.regions.end(), [&](const auto& r) { return r.second == local; })) {
        list.regions.emplace_back(local->id, local);
      }
    }
    if (loff > local->length || len > local->length - loff) {
      throw Error(code::kOutOfRange, at() + "local range [" + std::to_string(loff) + ", " + std::to_string(loff + len) +
                                         ") exceeds region " + std::to_string(lregion) + " of " +
                                         std::to_string(local->length) + " bytes");
    }
    auto rit = peer.regions.find(static_cast<uint32_t>(rregion));
    if (rregion > UINT32_MAX || rit == peer.regions.end()) {
      throw Error(code::kUnknownRegion,
                  at() + "peer '" + peer.name + "' advertises no region " + std::to_string(rregion));
    }
    if (roff > rit->second.length || len > rit->second.length - roff) {
      throw Error(code::kOutOfRange, at() + "remote range [" + std::to_string(roff) + ", " +
                                         std::to_string(roff + len) + ") exceeds region " + std::to_string(rregion) +
                                         " of peer '" + peer.name + "' (" + std::to_string(rit->second.length) +
                                         " bytes)");
    }
    list.items[i] = {local, loff, static_cast<uint32_t>(rregion), &rit->second, roff, len};
    if (std::none_of(list.remote_regions.begin(), list.remote_regions.end(),
                     [&](const auto& r) { return r.second == &rit->second; })) {
      list.remote_regions.emplace_back(static_cast<uint32_t>(rregion), &rit->second);
      list.device = list.device || rit->second.device;
    }
    list.bytes += len;
  }
  // Two descriptors landing on the same bytes would make the result depend on completion order.
  list.read_overlap = FindOverlap(OpKind::kRead, list.items, nullptr, count);
  list.write_overlap = FindOverlap(OpKind::kWrite, list.items, nullptr, count);
  return list;
}

uint64_t Agent::PostTransfer(OpKind kind, uint32_t peer_id, const Descriptor* d, size_t count,
                             const uint8_t* notification, size_t notification_length, bool has_notification) {
  PreparedList list = Resolve(peer_id, d, count);
  return Submit(kind, list, nullptr, count, notification, notification_length, has_notification);
}

uint32_t Agent::Prepare(uint32_t peer_id, const Descriptor* d, size_t count) {
  auto list = std::make_unique<PreparedList>(Resolve(peer_id, d, count));
  const uint32_t id = next_prepared_++;
  prepared_.emplace(id, std::move(list));
  return id;
}

void Agent::ReleasePrepared(uint32_t id) {
  if (prepared_.erase(id) == 0) throw Error(code::kClosed, "prepared list " + std::to_string(id) + " was released");
}

const PreparedList& Agent::PreparedOrThrow(uint32_t id) const {
  auto it = prepared_.find(id);
  if (it == prepared_.end()) throw Error(code::kClosed, "prepared list " + std::to_string(id) + " was released");
  return *it->second;
}

uint64_t Agent::PostPrepared(OpKind kind, uint32_t list_id, const uint32_t* indices, size_t count,
                             const uint8_t* notification, size_t notification_length, bool has_notification) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  const PreparedList& list = PreparedOrThrow(list_id);
  if (indices == nullptr) count = list.items.size();
  return Submit(kind, list, indices, count, notification, notification_length, has_notification);
}

uint64_t Agent::Submit(OpKind kind, const PreparedList& list, const uint32_t* indices, size_t count,
                       const uint8_t* notification, size_t notification_length, bool has_notification) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  Peer& peer = PeerOrThrow(list.peer);
  if (count == 0) throw Error(code::kInvalidArgument, "a transfer needs at least one descriptor");
  auto t = std::make_unique<Transfer>();
  t->kind = kind;
  t->bytes = SelectedBytes(kind, list, indices, count);
  // Everything that can refuse the transfer runs before it is counted in flight on its regions: a refusal
  // after that would leave them busy for good (no completion ever counts them down).
  CheckAdvertised(peer, kind, list, indices, count);
  if (has_notification) AttachNotification(*t, peer, notification, notification_length);
  PinRegions(*t, list);
  // Device memory is the NIC's to read and write (FI_HMEM); a same-host copy would hand its address to the CPU.
  if (peer.cma_pid != 0 && !list.device) return LaunchCopy(std::move(t), peer, list, indices, count);
  return LaunchFabric(std::move(t), peer, list, indices, count);
}

// The bytes of the selection (all of the list when `indices` is null); throws when its destinations overlap
// or an index is out of range or repeated.
uint64_t Agent::SelectedBytes(OpKind kind, const PreparedList& list, const uint32_t* indices, size_t count) const {
  const std::string& overlap = kind == OpKind::kWrite ? list.write_overlap : list.read_overlap;
  if (indices == nullptr) {
    if (!overlap.empty()) throw Error(code::kOverlap, overlap);
    return list.bytes;
  }
  // A selection of a list without overlaps overlaps only if it repeats an index. A few indices are compared
  // with each other: a bitmap of the whole list costs a post of one index into a long list dearly (figures:
  // docs/design.md, "Posting: prepared lists, merging, striping").
  uint64_t bytes = 0;
  const bool bitmap = count > kFewIndices;
  std::vector<bool> seen(bitmap ? list.items.size() : 0);
  for (size_t k = 0; k < count; ++k) {
    const uint32_t i = indices[k];
    if (i >= list.items.size()) {
      throw Error(code::kOutOfRange, "index " + std::to_string(i) + " is outside the prepared list of " +
                                         std::to_string(list.items.size()) + " descriptors");
    }
    const bool repeated = bitmap ? seen[i] : std::find(indices, indices + k, i) != indices + k;
    if (repeated) throw Error(code::kOverlap, "descriptor " + std::to_string(i) + " is selected twice");
    if (bitmap) seen[i] = true;
    bytes += list.items[i].length;
  }
  if (!overlap.empty()) {
    std::string subset = FindOverlap(kind, list.items, indices, count);
    if (!subset.empty()) throw Error(code::kOverlap, subset);
  }
  return bytes;
}

// Control messages go on rail 0 (op.rail 0), where the peer's receives are posted.
void Agent::AttachNotification(Transfer& t, const Peer& peer, const uint8_t* data, size_t length) const {
  t.notify_message = EncodeNotification(name_, data, length);
  t.notify_op = std::make_unique<Op>();
  Op& op = *t.notify_op;
  op.kind = OpKind::kSend;
  op.transfer = &t;
  op.local = t.notify_message.data();
  op.length = t.notify_message.size();
  op.dest = peer.addrs[0][0];
}

// Counts the transfer in flight on each of the list's local regions, which must all still be registered.
void Agent::PinRegions(Transfer& t, const PreparedList& list) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  for (const auto& [id, region] : list.regions) {
    auto it = regions_.find(id);
    if (it == regions_.end() || it->second.get() != region) {
      throw Error(code::kUnknownRegion, "local region " + std::to_string(id) + " was deregistered");
    }
  }
  for (const auto& [id, region] : list.regions) {
    t.regions.push_back(region);
    ++region->inflight;
  }
}

// Plans the ops over the rails and picks the lane: express (posted and reaped here) for small transfers
// without a notification, else the rail threads, which the owner may spin for when the transfer is small.
uint64_t Agent::LaunchFabric(std::unique_ptr<Transfer> t, const Peer& peer, const PreparedList& list,
                             const uint32_t* indices, size_t count) {
  RailPlan plan;
  plan.rails = rails_.size();
  plan.remote_rails = peer.remote_rails;
  plan.max_msg = rails_[0]->max_msg_size();
  plan.stripe_threshold = stripe_threshold_;
  plan.next_rail = next_rail_;
  PlanOps(*t, t->kind, peer, list, indices, count, plan);
  next_rail_ = plan.next_rail;
  if (!list.device && !t->notify_op && t->bytes <= express_max_bytes_ && t->ops.size() <= kExpressMaxOps) {
    for (Op& op : t->ops) op.express = true;
  } else if (t->bytes <= small_max_bytes_ && t->ops.size() <= kExpressMaxOps) {
    t->pickup = Pickup::kSpin;
    ++awaited_in_flight_;  // before any op is posted: Finish (on a rail thread) counts it down
  }
  return Launch(std::move(t));
}

void Agent::CheckAdvertised(const Peer& peer, OpKind kind, const PreparedList& list, const uint32_t* indices,
                            size_t count) const {
  // A removed grant leaves prepared lists pointing at nothing: each remote region must still be the one resolved.
  for (const auto& [id, r] : list.remote_regions) {
    auto it = peer.regions.find(id);
    if (it == peer.regions.end() || &it->second != r) {
      throw Error(code::kUnknownRegion,
                  "region or grant " + std::to_string(id) + " of peer '" + peer.name + "' was removed");
    }
  }
  const uint64_t need = kind == OpKind::kWrite ? kAccessWrite : kAccessRead;
  auto check = [&](uint32_t id, const RemoteRegion& r) {
    if ((r.access & need) != need) {
      throw Error(code::kRemoteAccess, "grant " + std::to_string(id) + " of peer '" + peer.name + "' is for " +
                                           (need == kAccessWrite ? "read" : "write") + " only");
    }
    if (peer.table && !peer.table->Live(id, r.base, r.length, need)) {
      throw Error(code::kRemoteAccess,
                  "peer '" + peer.name + "' does not advertise region " + std::to_string(id) +
                      " for this access (deregistered or revoked since it was loaded, or never advertised)");
    }
  };
  if (indices == nullptr) {
    for (const auto& [id, r] : list.remote_regions) check(id, *r);
    return;
  }
  const RemoteRegion* last = nullptr;
  for (size_t k = 0; k < count; ++k) {
    const PreparedItem& item = list.items[indices[k]];
    if (item.remote != last) check(item.remote_id, *item.remote);
    last = item.remote;
  }
}

// Starts the clock, gives the transfer its id and registers it as in flight; returns it (now owned by transfers_).
Transfer* Agent::Track(std::unique_ptr<Transfer> t) {
  t->start = std::chrono::steady_clock::now();
  Transfer* raw = t.get();
  std::lock_guard<std::mutex> lock(transfers_mu_);
  raw->id = next_transfer_++;
  transfers_.emplace(raw->id, std::move(t));
  return raw;
}

// Registers the transfer, posts its express ops here and hands the rest to their rails, each rail woken once.
uint64_t Agent::Launch(std::unique_ptr<Transfer> t) {
  t->remaining = t->ops.size();
  t->unposted = t->ops.size();
  Transfer* raw = Track(std::move(t));
  const uint64_t id = raw->id;
  std::vector<std::vector<Op*>> by_rail;  // sized only when some op goes to a rail thread
  bool express = false;
  for (Op& op : raw->ops) {
    if (op.express) {
      const auto posting = std::chrono::steady_clock::now();
      const int rc = rails_[op.rail]->PostExpress(&op);
      if (rc == 0)
        OnOpPosted(
            &op,
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - posting).count());
      if (rc >= 0) {
        express = true;
        continue;
      }
      op.express = false;  // no express lane here, or refused: the rail thread takes it (and reports any error)
    }
    if (by_rail.empty()) by_rail.resize(rails_.size());
    by_rail[op.rail].push_back(&op);
  }
  for (size_t r = 0; r < by_rail.size(); ++r) {
    if (!by_rail[r].empty()) rails_[r]->Submit(by_rail[r].data(), by_rail[r].size());
  }
  // A first look right away: shm often completes a small op inside the post call. What completes is pushed
  // without waking the event loop; the binding's reap() right after the post delivers it. (`raw` may be
  // gone after this.)
  if (express) ReapExpress();
  return id;
}

uint64_t Agent::LaunchCopy(std::unique_ptr<Transfer> t, const Peer& peer, const PreparedList& list,
                           const uint32_t* indices, size_t count) {
  CmaJob job;
  job.pid = peer.cma_pid;
  job.write = t->kind == OpKind::kWrite;
  const std::vector<Run> runs = MergeRuns(list, indices, count);
  // Through the mappings when every remote region is mapped here, else by cross-memory attach.
  job.mapped = peer.watch != nullptr &&
               std::all_of(runs.begin(), runs.end(), [](const Run& r) { return r.first->remote->mapping != nullptr; });
  for (const Run& r : runs) {
    job.local.push_back({r.first->local->data + r.local_offset, r.length});
    if (job.mapped) {
      const auto& mapping = r.first->remote->mapping;
      job.remote.push_back({mapping->region() + r.remote_offset, r.length});
      if (job.keep.empty() || job.keep.back() != mapping) job.keep.push_back(mapping);
    } else {
      // Metadata carries every region's real base address, whatever the provider's addressing.
      job.remote.push_back(
          {reinterpret_cast<void*>(static_cast<uintptr_t>(r.first->remote->base + r.remote_offset)), r.length});
    }
  }
  if (job.mapped) job.watch = peer.watch;
  // Checked again right before the copy (on a copier thread that may be much later than this post).
  job.table = peer.table;
  for (const Run& r : runs) {
    if (job.checks.empty() || job.checks.back().id != r.first->remote_id) {
      job.checks.push_back({r.first->remote_id, r.first->remote->base, r.first->remote->length});
    }
  }
  t->path = job.mapped ? TransferPath::kMapped : TransferPath::kCma;
  t->cma_segments = job.local.size();
  if (t->bytes <= small_max_bytes_) {
    // Small: copy here, on the posting thread. A few microseconds of syscall (which a dead peer fails with
    // ESRCH, never hangs) instead of a hand-off to a copier thread and back; the binding's reap() right after
    // the post delivers the completion.
    t->pickup = Pickup::kInline;
    t->remaining = 1;
    t->posted_ns = 0;
    Transfer* raw = Track(std::move(t));
    const uint64_t id = raw->id;
    ErrorInfo error = CmaCopy(job);
    OnPartDone(raw, error.ok() ? nullptr : &error);  // `raw` may be gone after this
    return id;
  }
  // Parts of at least 1 MiB, copied in parallel by the copier threads.
  std::vector<CmaJob> parts = SplitCmaJob(std::move(job), copier_.threads(), 1 << 20);
  t->remaining = parts.size();
  t->posted_ns = 0;
  Transfer* raw = Track(std::move(t));
  const uint64_t id = raw->id;
  for (CmaJob& part : parts) {
    part.transfer = raw;
    copier_.Submit(std::move(part));
  }
  return id;
}

uint64_t Agent::Warmup(uint32_t peer_id) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  if (peer.regions.empty()) {
    throw Error(code::kUnknownRegion, "peer '" + peer.name + "' advertises no region to warm the rails up with");
  }
  if (scratch_region_ == 0) {
    scratch_.resize(64 * rails_.size());
    scratch_region_ = RegisterMemory(scratch_.data(), scratch_.size(), false);
    std::lock_guard<std::mutex> lock(regions_mu_);
    regions_.at(scratch_region_)->internal = true;
  }
  Region* scratch;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    scratch = regions_.at(scratch_region_).get();
    ++scratch->inflight;
  }
  // A region the peer still advertises (where its table says so).
  auto chosen = std::find_if(peer.regions.begin(), peer.regions.end(), [&](const auto& r) {
    return (r.second.access & kAccessRead) != 0 &&
           (!peer.table || peer.table->Live(r.first, r.second.base, r.second.length, kAccessRead));
  });
  if (chosen == peer.regions.end()) {
    std::lock_guard<std::mutex> lock(regions_mu_);
    --scratch->inflight;
    throw Error(code::kRemoteAccess, "peer '" + peer.name + "' advertises none of its regions any more");
  }
  const auto& remote = chosen->second;
  auto t = std::make_unique<Transfer>();
  t->kind = OpKind::kRead;
  t->regions.push_back(scratch);
  // One READ per rail, and one more per rail's express lane when the agent has one.
  const size_t lanes = express_max_bytes_ > 0 ? 2 : 1;
  t->ops.resize(rails_.size() * lanes);
  for (size_t i = 0; i < t->ops.size(); ++i) {
    const uint32_t lr = static_cast<uint32_t>(i % rails_.size());
    const uint32_t rr = static_cast<uint32_t>(lr % peer.remote_rails);
    Op& op = t->ops[i];
    op.kind = OpKind::kRead;
    op.express = i >= rails_.size();
    op.transfer = t.get();
    op.local = scratch->data + 64 * lr + (op.express ? 32 : 0);
    op.length = 1;
    op.desc = scratch->mrs[lr].desc;
    op.dest = peer.addrs[lr][rr];
    op.remote_addr = peer.virt_addr ? remote.base : 0;
    op.remote_key = remote.keys[rr];
    op.rail = lr;
    t->rails_mask |= 1ull << (lr % kMaxRails);
    t->bytes += 1;
  }
  return Launch(std::move(t));
}

void Agent::OnOpPosted(Op* op, int64_t call_ns) {
  Transfer* t = op->transfer;
  if (op->kind == OpKind::kSend || t == nullptr) return;
  t->provider_post_ns += call_ns;
  if (t->unposted.fetch_sub(1) == 1) {
    t->posted_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t->start).count();
  }
}

uint64_t Agent::PostNotification(uint32_t peer_id, const uint8_t* data, size_t length) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  auto t = std::make_unique<Transfer>();
  t->kind = OpKind::kSend;
  // The notification alone: its SEND is the transfer's only op.
  AttachNotification(*t, peer, data, length);
  t->ops.push_back(std::move(*t->notify_op));
  t->notify_op.reset();
  t->rails_mask = 1;
  return Launch(std::move(t));
}

}  // namespace kvf
