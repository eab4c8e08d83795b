#include "core/agent.h"

#include "core/live_agents.h"
#include "core/notification.h"

#include <rdma/fi_domain.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

namespace kvf {

const std::string& LibfabricLoadError();  // libfabric_loader.cc

namespace {

constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
constexpr std::chrono::milliseconds kRailStopTimeout{2000};

std::atomic<uint32_t> g_agent_counter{0};

uint64_t ExactIndex(double v, size_t descriptor, const char* field) {
  if (!(v >= 0) || v >= kMaxExactInteger || std::floor(v) != v) {
    throw Error("KVF_ERR_INVALID_ARGUMENT", "descriptor " + std::to_string(descriptor) + ": " + field +
                                                " must be a non-negative integer below 2^53");
  }
  return static_cast<uint64_t>(v);
}

}  // namespace

Agent::Agent(const AgentOptions& options, std::function<void()> wake)
    : name_(options.name), wake_(std::move(wake)), stripe_threshold_(options.stripe_threshold) {
  if (name_.empty() || name_.size() > kMaxNameBytes) {
    throw Error("KVF_ERR_INVALID_ARGUMENT", "agent name must be 1..255 bytes");
  }
  OpenRails(options);
  for (auto& rail : rails_) rail->Start();
  RegisterLiveAgent(this);
}

Agent::~Agent() {
  CloseNow();
  UnregisterLiveAgent(this);
}

void Agent::OpenRails(const AgentOptions& options) {
  if (!LibfabricLoadError().empty()) throw Error("KVF_ERR_PROVIDER_UNAVAILABLE", LibfabricLoadError());
  fi_info* hints = fi_allocinfo();
  if (hints == nullptr) throw Error("KVF_ERR_ALLOC", "fi_allocinfo failed");
  hints->caps = FI_MSG | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE | FI_SEND | FI_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(options.provider.c_str());
  if (!options.domain.empty()) hints->domain_attr->name = strdup(options.domain.c_str());

  fi_info* list = nullptr;
  const char* node = options.node.empty() ? nullptr : options.node.c_str();
  int rc = fi_getinfo(FI_VERSION(1, 9), node, nullptr, node != nullptr ? FI_SOURCE : 0, hints, &list);
  fi_freeinfo(hints);
  if (rc != 0 || list == nullptr) {
    std::string what = "no libfabric provider '" + options.provider + "' with FI_EP_RDM, RMA and messaging";
    if (node != nullptr) what += " bound to " + options.node;
    if (!options.domain.empty()) what += " in domain " + options.domain;
    throw Error("KVF_ERR_PROVIDER_UNAVAILABLE", what + (rc != 0 ? std::string(": ") + fi_strerror(-rc) : ""),
                rc < 0 ? -rc : 0, rc != 0 ? fi_strerror(-rc) : "");
  }

  // One rail per distinct domain (NIC) by default; more rails than domains reuse them round-robin,
  // which on tcp gives parallel connections.
  std::vector<fi_info*> domains;
  std::set<std::string> seen;
  for (fi_info* i = list; i != nullptr; i = i->next) {
    if (seen.insert(i->domain_attr->name ? i->domain_attr->name : "").second) domains.push_back(i);
  }
  provider_ = domains[0]->fabric_attr->prov_name ? domains[0]->fabric_attr->prov_name : options.provider;
  fabric_name_ = domains[0]->fabric_attr->name ? domains[0]->fabric_attr->name : "";
  const uint32_t count = options.rails > 0 ? options.rails : static_cast<uint32_t>(domains.size());
  const uint32_t agent_number = g_agent_counter++;
  try {
    for (uint32_t r = 0; r < count; ++r) {
      fi_info* chosen = fi_dupinfo(domains[r % domains.size()]);
      if (chosen == nullptr) throw Error("KVF_ERR_ALLOC", "fi_dupinfo failed");
      if (chosen->addr_format == FI_ADDR_STR && provider_ == "shm") {
        // shm names its endpoint after the process id by default, so a second endpoint in one process
        // would collide; give every rail of every agent its own name.
        std::string addr = "fi_shm://kvf_" + std::to_string(getpid()) + "_" + std::to_string(agent_number) + "_" +
                           std::to_string(r);
        free(chosen->src_addr);
        chosen->src_addr = strdup(addr.c_str());
        chosen->src_addrlen = addr.size() + 1;
      }
      rails_.push_back(std::make_unique<Rail>(r, chosen, this, r == 0 ? kNotificationMessageMax : 0));
    }
  } catch (...) {
    rails_.clear();
    fi_freeinfo(list);
    throw;
  }
  fi_freeinfo(list);
}

std::vector<std::string> Agent::domain_names() const {
  std::vector<std::string> out;
  for (const auto& r : rails_) out.emplace_back(r->info()->domain_attr->name ? r->info()->domain_attr->name : "");
  return out;
}

uint32_t Agent::RegisterMemory(void* data, size_t length) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  if (length == 0) throw Error("KVF_ERR_ZERO_LENGTH", "cannot register an empty buffer");
  auto region = std::make_unique<Region>();
  region->data = static_cast<uint8_t*>(data);
  region->length = length;
  std::lock_guard<std::mutex> lock(regions_mu_);
  region->id = next_region_++;
  try {
    for (auto& rail : rails_) region->mrs.push_back(rail->RegisterMemory(data, length, region->id));
  } catch (...) {
    for (auto& mr : region->mrs) Rail::CloseMr(mr);
    throw;
  }
  const uint32_t id = region->id;
  regions_.emplace(id, std::move(region));
  return id;
}

void Agent::DeregisterMemory(uint32_t id) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) throw Error("KVF_ERR_UNKNOWN_REGION", "region " + std::to_string(id) + " is not registered");
  if (it->second->inflight > 0) {
    throw Error("KVF_ERR_BUSY", "region " + std::to_string(id) + " has " + std::to_string(it->second->inflight) +
                                    " transfers in flight");
  }
  for (auto& mr : it->second->mrs) Rail::CloseMr(mr);
  regions_.erase(it);
}

std::vector<const Region*> Agent::ListRegions() const {
  std::lock_guard<std::mutex> lock(regions_mu_);
  std::vector<const Region*> out;
  for (const auto& [id, r] : regions_) {
    if (!r->internal) out.push_back(r.get());
  }
  return out;
}

uint32_t Agent::AddPeer(const std::string& name, const PeerOptions& options,
                        const std::vector<std::vector<uint8_t>>& addresses, std::map<uint32_t, RemoteRegion> regions) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  if (addresses.empty()) throw Error("KVF_ERR_BAD_METADATA", "peer advertises no rails");
  for (const auto& [id, region] : regions) {
    if (region.keys.size() != addresses.size()) {
      throw Error("KVF_ERR_BAD_METADATA", "region " + std::to_string(id) + " has " + std::to_string(region.keys.size()) +
                                              " keys for " + std::to_string(addresses.size()) + " rails");
    }
  }
  Peer peer;
  peer.name = name;
  peer.virt_addr = options.virt_addr;
  if (options.cma_pid > 0 && !regions.empty()) {
    // Same host by the peer's word: check the kernel lets us in before every transfer relies on it.
    const RemoteRegion& first = regions.begin()->second;
    peer.cma_refused = CmaProbe(options.cma_pid, first.base, 1);
    if (peer.cma_refused.empty()) peer.cma_pid = options.cma_pid;
  }
  peer.remote_rails = addresses.size();
  peer.regions = std::move(regions);
  for (auto& rail : rails_) {
    std::vector<fi_addr_t> row;
    for (const auto& address : addresses) row.push_back(rail->InsertAddress(address.data(), address.size()));
    peer.addrs.push_back(std::move(row));
  }
  const uint32_t id = next_peer_++;
  peers_.emplace(id, std::move(peer));
  return id;
}

void Agent::RemovePeer(uint32_t id) {
  // Addresses stay in the AVs: transfers in flight may still use them, and they are freed with the rails.
  if (peers_.erase(id) == 0) throw Error("KVF_ERR_UNKNOWN_PEER", "peer " + std::to_string(id) + " is not loaded");
}

Peer& Agent::PeerOrThrow(uint32_t id) {
  auto it = peers_.find(id);
  if (it == peers_.end()) throw Error("KVF_ERR_UNKNOWN_PEER", "peer " + std::to_string(id) + " is not loaded");
  return it->second;
}

PreparedList Agent::Resolve(uint32_t peer_id, const double* d, size_t count) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  if (count == 0) throw Error("KVF_ERR_INVALID_ARGUMENT", "a transfer needs at least one descriptor");
  PreparedList list;
  list.peer = peer_id;
  list.items.resize(count);
  std::lock_guard<std::mutex> lock(regions_mu_);
  // Regions are looked up by id; descriptors of one list usually name one or two, so cache the last hit.
  const Region* last_local = nullptr;
  for (size_t i = 0; i < count; ++i) {
    const double* f = d + i * DescriptorFields::kCount;
    const uint64_t lregion = ExactIndex(f[0], i, "localRegion");
    const uint64_t loff = ExactIndex(f[1], i, "localOffset");
    const uint64_t rregion = ExactIndex(f[2], i, "remoteRegion");
    const uint64_t roff = ExactIndex(f[3], i, "remoteOffset");
    const uint64_t len = ExactIndex(f[4], i, "length");
    auto at = [i] { return "descriptor " + std::to_string(i) + ": "; };
    if (len == 0) throw Error("KVF_ERR_ZERO_LENGTH", at() + "length is 0");
    Region* local;
    if (last_local != nullptr && last_local->id == lregion) {
      local = const_cast<Region*>(last_local);
    } else {
      auto lit = regions_.find(static_cast<uint32_t>(lregion));
      if (lregion > UINT32_MAX || lit == regions_.end() || lit->second->internal) {
        throw Error("KVF_ERR_UNKNOWN_REGION", at() + "local region " + std::to_string(lregion) + " is not registered");
      }
      local = lit->second.get();
      last_local = local;
      if (std::none_of(list.regions.begin(), list.regions.end(), [&](const auto& r) { return r.second == local; })) {
        list.regions.emplace_back(local->id, local);
      }
    }
    if (loff > local->length || len > local->length - loff) {
      throw Error("KVF_ERR_OUT_OF_RANGE", at() + "local range [" + std::to_string(loff) + ", " + std::to_string(loff + len) +
                                              ") exceeds region " + std::to_string(lregion) + " of " +
                                              std::to_string(local->length) + " bytes");
    }
    auto rit = peer.regions.find(static_cast<uint32_t>(rregion));
    if (rregion > UINT32_MAX || rit == peer.regions.end()) {
      throw Error("KVF_ERR_UNKNOWN_REGION", at() + "peer '" + peer.name + "' advertises no region " + std::to_string(rregion));
    }
    if (roff > rit->second.length || len > rit->second.length - roff) {
      throw Error("KVF_ERR_OUT_OF_RANGE", at() + "remote range [" + std::to_string(roff) + ", " + std::to_string(roff + len) +
                                              ") exceeds region " + std::to_string(rregion) + " of peer '" + peer.name +
                                              "' (" + std::to_string(rit->second.length) + " bytes)");
    }
    list.items[i] = {local, loff, static_cast<uint32_t>(rregion), &rit->second, roff, len};
    list.bytes += len;
  }
  // Two descriptors landing on the same bytes would make the result depend on completion order.
  list.read_overlap = FindOverlap(OpKind::kRead, list.items, nullptr, count);
  list.write_overlap = FindOverlap(OpKind::kWrite, list.items, nullptr, count);
  return list;
}

uint64_t Agent::PostTransfer(OpKind kind, uint32_t peer_id, const double* d, size_t count,
                             const uint8_t* notification, size_t notification_length, bool has_notification) {
  PreparedList list = Resolve(peer_id, d, count);
  return Submit(kind, list, nullptr, count, notification, notification_length, has_notification);
}

uint32_t Agent::Prepare(uint32_t peer_id, const double* d, size_t count) {
  auto list = std::make_unique<PreparedList>(Resolve(peer_id, d, count));
  const uint32_t id = next_prepared_++;
  prepared_.emplace(id, std::move(list));
  return id;
}

void Agent::ReleasePrepared(uint32_t id) {
  if (prepared_.erase(id) == 0) throw Error("KVF_ERR_CLOSED", "prepared list " + std::to_string(id) + " was released");
}

const PreparedList& Agent::PreparedOrThrow(uint32_t id) const {
  auto it = prepared_.find(id);
  if (it == prepared_.end()) throw Error("KVF_ERR_CLOSED", "prepared list " + std::to_string(id) + " was released");
  return *it->second;
}

uint64_t Agent::PostPrepared(OpKind kind, uint32_t list_id, const uint32_t* indices, size_t count,
                             const uint8_t* notification, size_t notification_length, bool has_notification) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  const PreparedList& list = PreparedOrThrow(list_id);
  if (indices == nullptr) count = list.items.size();
  return Submit(kind, list, indices, count, notification, notification_length, has_notification);
}

uint64_t Agent::Submit(OpKind kind, const PreparedList& list, const uint32_t* indices, size_t count,
                       const uint8_t* notification, size_t notification_length, bool has_notification) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  Peer& peer = PeerOrThrow(list.peer);
  if (count == 0) throw Error("KVF_ERR_INVALID_ARGUMENT", "a transfer needs at least one descriptor");
  auto t = std::make_unique<Transfer>();
  t->kind = kind;
  if (indices == nullptr) {
    const std::string& overlap = kind == OpKind::kWrite ? list.write_overlap : list.read_overlap;
    if (!overlap.empty()) throw Error("KVF_ERR_OVERLAP", overlap);
    t->bytes = list.bytes;
  } else {
    // A selection of a list without overlaps overlaps only if it repeats an index.
    std::vector<bool> seen(list.items.size());
    for (size_t k = 0; k < count; ++k) {
      const uint32_t i = indices[k];
      if (i >= list.items.size()) {
        throw Error("KVF_ERR_OUT_OF_RANGE", "index " + std::to_string(i) + " is outside the prepared list of " +
                                                std::to_string(list.items.size()) + " descriptors");
      }
      if (seen[i]) throw Error("KVF_ERR_OVERLAP", "descriptor " + std::to_string(i) + " is selected twice");
      seen[i] = true;
      t->bytes += list.items[i].length;
    }
    const std::string& overlap = kind == OpKind::kWrite ? list.write_overlap : list.read_overlap;
    if (!overlap.empty()) {
      std::string subset = FindOverlap(kind, list.items, indices, count);
      if (!subset.empty()) throw Error("KVF_ERR_OVERLAP", subset);
    }
  }
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    for (const auto& [id, region] : list.regions) {
      auto it = regions_.find(id);
      if (it == regions_.end() || it->second.get() != region) {
        throw Error("KVF_ERR_UNKNOWN_REGION", "local region " + std::to_string(id) + " was deregistered");
      }
    }
    for (const auto& [id, region] : list.regions) {
      t->regions.push_back(region);
      ++region->inflight;
    }
  }
  if (has_notification) t->notify_message = EncodeNotification(name_, notification, notification_length);
  if (has_notification) {
    t->notify_op = std::make_unique<Op>();
    Op& op = *t->notify_op;
    op.kind = OpKind::kSend;
    op.transfer = t.get();
    op.local = t->notify_message.data();
    op.length = t->notify_message.size();
    op.dest = peer.addrs[0][0];
  }
  if (peer.cma_pid != 0) return LaunchCopy(std::move(t), peer, list, indices, count);
  RailPlan plan;
  plan.rails = rails_.size();
  plan.remote_rails = peer.remote_rails;
  plan.max_msg = rails_[0]->max_msg_size();
  plan.stripe_threshold = stripe_threshold_;
  plan.next_rail = next_rail_;
  PlanOps(*t, kind, peer, list, indices, count, plan);
  next_rail_ = plan.next_rail;
  return Launch(std::move(t));
}

// Registers the transfer and hands its ops to their rails, each rail woken once.
uint64_t Agent::Launch(std::unique_ptr<Transfer> t) {
  t->remaining = t->ops.size();
  t->unposted = t->ops.size();
  t->start = std::chrono::steady_clock::now();
  Transfer* raw = t.get();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    id = raw->id = next_transfer_++;
    transfers_.emplace(id, std::move(t));
  }
  const size_t nrails = rails_.size();
  if (nrails == 1) {
    std::vector<Op*> ops(raw->ops.size());
    for (size_t i = 0; i < ops.size(); ++i) ops[i] = &raw->ops[i];
    rails_[0]->Submit(ops.data(), ops.size());
    return id;
  }
  std::vector<std::vector<Op*>> by_rail(nrails);
  for (Op& op : raw->ops) by_rail[op.rail].push_back(&op);
  for (size_t r = 0; r < nrails; ++r) {
    if (!by_rail[r].empty()) rails_[r]->Submit(by_rail[r].data(), by_rail[r].size());
  }
  return id;
}

uint64_t Agent::LaunchCopy(std::unique_ptr<Transfer> t, const Peer& peer, const PreparedList& list,
                           const uint32_t* indices, size_t count) {
  CmaJob job;
  job.pid = peer.cma_pid;
  job.write = t->kind == OpKind::kWrite;
  for (const Run& r : MergeRuns(list, indices, count)) {
    job.local.push_back({r.first->local->data + r.local_offset, r.length});
    // Metadata carries every region's real base address, whatever the provider's addressing.
    job.remote.push_back({reinterpret_cast<void*>(static_cast<uintptr_t>(r.first->remote->base + r.remote_offset)), r.length});
  }
  t->cma = true;
  t->cma_segments = job.local.size();
  // Parts of at least 1 MiB, copied in parallel by the copier threads.
  std::vector<CmaJob> parts = SplitCmaJob(std::move(job), copier_.threads(), 1 << 20);
  t->remaining = parts.size();
  t->start = std::chrono::steady_clock::now();
  t->posted_ns = 0;
  Transfer* raw = t.get();
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    raw->id = next_transfer_++;
    transfers_.emplace(raw->id, std::move(t));
  }
  const uint64_t id = raw->id;
  for (CmaJob& part : parts) {
    part.transfer = raw;
    copier_.Submit(std::move(part));
  }
  return id;
}

void Agent::OnCopyDone(Transfer* t, const ErrorInfo* error) {
  if (error != nullptr) {
    std::lock_guard<std::mutex> lock(t->error_mu);
    if (t->error.ok()) t->error = *error;
  }
  if (t->remaining.fetch_sub(1) != 1) return;
  bool failed;
  {
    std::lock_guard<std::mutex> lock(t->error_mu);
    failed = !t->error.ok();
  }
  DataDone(t, failed);
}

uint64_t Agent::Warmup(uint32_t peer_id) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  if (peer.regions.empty()) {
    throw Error("KVF_ERR_UNKNOWN_REGION", "peer '" + peer.name + "' advertises no region to warm the rails up with");
  }
  if (scratch_region_ == 0) {
    scratch_.resize(64 * rails_.size());
    scratch_region_ = RegisterMemory(scratch_.data(), scratch_.size());
    std::lock_guard<std::mutex> lock(regions_mu_);
    regions_.at(scratch_region_)->internal = true;
  }
  Region* scratch;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    scratch = regions_.at(scratch_region_).get();
    ++scratch->inflight;
  }
  const auto& [remote_id, remote] = *peer.regions.begin();
  auto t = std::make_unique<Transfer>();
  t->kind = OpKind::kRead;
  t->regions.push_back(scratch);
  t->ops.resize(rails_.size());
  for (uint32_t lr = 0; lr < rails_.size(); ++lr) {
    const uint32_t rr = static_cast<uint32_t>(lr % peer.remote_rails);
    Op& op = t->ops[lr];
    op.kind = OpKind::kRead;
    op.transfer = t.get();
    op.local = scratch->data + 64 * lr;
    op.length = 1;
    op.desc = scratch->mrs[lr].desc;
    op.dest = peer.addrs[lr][rr];
    op.remote_addr = peer.virt_addr ? remote.base : 0;
    op.remote_key = remote.keys[rr];
    op.rail = lr;
    t->rails_mask |= 1ull << (lr % 64);
    t->bytes += 1;
  }
  return Launch(std::move(t));
}

void Agent::OnOpPosted(Op* op, int64_t call_ns) {
  Transfer* t = op->transfer;
  if (op->kind == OpKind::kSend || t == nullptr) return;
  t->provider_post_ns += call_ns;
  if (t->unposted.fetch_sub(1) == 1) {
    t->posted_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t->start).count();
  }
}

uint64_t Agent::PostNotification(uint32_t peer_id, const uint8_t* data, size_t length) {
  if (closing_) throw Error("KVF_ERR_CLOSED", "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  auto t = std::make_unique<Transfer>();
  t->kind = OpKind::kSend;
  t->notify_message = EncodeNotification(name_, data, length);
  t->ops.resize(1);
  Op& op = t->ops[0];
  op.kind = OpKind::kSend;
  op.transfer = t.get();
  op.local = t->notify_message.data();
  op.length = t->notify_message.size();
  op.dest = peer.addrs[0][0];
  t->remaining = 1;
  t->rails_mask = 1;
  t->start = std::chrono::steady_clock::now();
  Transfer* raw = t.get();
  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    id = raw->id = next_transfer_++;
    transfers_.emplace(id, std::move(t));
  }
  rails_[0]->Submit(&raw->ops[0]);
  return id;
}

void Agent::OnOpComplete(Op* op, const ErrorInfo* error) {
  Transfer* t = op->transfer;
  bool failed;
  {
    std::lock_guard<std::mutex> lock(t->error_mu);
    if (error != nullptr && t->error.ok()) t->error = *error;
    failed = !t->error.ok();
  }
  if (t->remaining.fetch_sub(1) != 1) return;
  DataDone(t, failed);
}

void Agent::DataDone(Transfer* t, bool failed) {
  if (t->notify_op && !t->notify_posted && !failed && !force_close_) {
    // Every write has been delivered (FI_DELIVERY_COMPLETE) or every read has landed: only now may the
    // target learn that the data is there.
    t->notify_posted = true;
    t->remaining = 1;
    rails_[0]->Submit(t->notify_op.get());
    return;
  }
  Finish(t);
}

void Agent::Finish(Transfer* t) {
  Event ev;
  ev.type = Event::Type::kTransferDone;
  ev.transfer_id = t->id;
  ev.error = t->error;
  ev.bytes = t->bytes;
  ev.rails_mask = t->rails_mask;
  ev.post_ns = t->posted_ns;
  ev.provider_post_ns = t->provider_post_ns;
  ev.ops = t->cma ? t->cma_segments : t->ops.size();
  ev.cma = t->cma;
  ev.duration_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t->start).count());
  for (Region* r : t->regions) --r->inflight;
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    transfers_.erase(t->id);
  }
  transfers_cv_.notify_all();
  PushEvent(std::move(ev));
}

void Agent::OnMessage(const uint8_t* data, size_t length) {
  Event ev;
  ev.type = Event::Type::kNotification;
  // Control messages come from the network: malformed ones are dropped.
  if (DecodeNotification(data, length, &ev.from, &ev.data)) PushEvent(std::move(ev));
}

void Agent::PushEvent(Event event) {
  {
    std::lock_guard<std::mutex> lock(events_mu_);
    events_.push_back(std::move(event));
  }
  if (wake_) wake_();
}

std::vector<Event> Agent::TakeEvents() {
  std::lock_guard<std::mutex> lock(events_mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

size_t Agent::transfers_in_flight() {
  std::lock_guard<std::mutex> lock(transfers_mu_);
  return transfers_.size();
}

void Agent::BeginClose(uint32_t timeout_ms) {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (closing_) return;
  closing_ = true;
  closer_ = std::thread([this, timeout_ms] {
    {
      std::unique_lock<std::mutex> lock(transfers_mu_);
      transfers_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                             [this] { return transfers_.empty() || force_close_; });
    }
    Shutdown();
  });
}

void Agent::CloseNow() {
  std::lock_guard<std::mutex> lock(close_mu_);
  closing_ = true;
  if (closer_.joinable()) {
    force_close_ = true;
    transfers_cv_.notify_all();
    closer_.join();
    return;
  }
  Shutdown();
}

void Agent::HaltRails() {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (closed_) return;
  if (closer_.joinable()) {  // a graceful close is under way: finish it now
    force_close_ = true;
    transfers_cv_.notify_all();
    closer_.join();
    return;
  }
  closing_ = true;
  force_close_ = true;
  StopRails();
}

// Stops every rail; a rail whose thread is stuck inside the provider is dropped from rails_ and leaked on
// purpose (its thread may still be inside the endpoint), so closing never hangs on a dead peer.
void Agent::StopRails() {
  copier_.Stop();  // fails queued copies with KVF_ERR_CLOSED; no copy outlives the agent's memory
  for (auto& rail : rails_) rail->RequestStop(true);
  for (auto& rail : rails_) {
    if (!rail->JoinWithin(kRailStopTimeout)) {
      leaked_rails_.insert(rail->index());
      (void)rail.release();
    }
  }
  rails_.erase(std::remove(rails_.begin(), rails_.end(), nullptr), rails_.end());
}

void Agent::Shutdown() {
  if (closed_.exchange(true)) return;
  force_close_ = true;
  StopRails();
  std::vector<RailMr> mrs;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    for (auto& [id, region] : regions_) {
      for (size_t r = 0; r < region->mrs.size(); ++r) {
        if (leaked_rails_.count(static_cast<uint32_t>(r)) == 0) mrs.push_back(region->mrs[r]);
      }
    }
    regions_.clear();
  }
  const bool shm = provider_ == "shm";
  if (shm && OtherShmAgentRunning(this)) {
    ParkShmEndpoints(std::move(rails_), std::move(mrs));
  } else {
    // The endpoint goes first: after it is closed no provider code touches our buffers or op contexts.
    for (auto& rail : rails_) rail->CloseEndpoint();
    for (auto& mr : mrs) Rail::CloseMr(mr);
    if (shm) CloseParkedShmEndpoints();
  }
  rails_.clear();
  // Whatever was posted and never completed is abandoned now that the endpoints are gone.
  std::vector<std::unique_ptr<Transfer>> abandoned;
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    for (auto& [id, t] : transfers_) abandoned.push_back(std::move(t));
    transfers_.clear();
  }
  for (auto& t : abandoned) {
    Event ev;
    ev.type = Event::Type::kTransferDone;
    ev.transfer_id = t->id;
    ev.error = t->error.ok() ? ErrorInfo{"KVF_ERR_CLOSED", "agent closed with the transfer in flight", 0, {}} : t->error;
    ev.bytes = t->bytes;
    PushEvent(std::move(ev));
  }
  peers_.clear();
  Event closed;
  closed.type = Event::Type::kClosed;
  PushEvent(std::move(closed));
}

}  // namespace kvf
