#include "core/agent.h"

#include "core/error_codes.h"
#include "core/live_agents.h"
#include "core/notification.h"
#include "core/shm_regions.h"

#include <rdma/fi_domain.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>

namespace kvf {

const std::string& LibfabricLoadError();  // libfabric_loader.cc

namespace {

constexpr std::chrono::milliseconds kRailStopTimeout{2000};
// How long closing waits for READs still in flight when the provider cannot close under them (Rail::Quiesce);
// rails whose READs outlast it are leaked rather than closed.
constexpr std::chrono::milliseconds kReadDrainTimeout{2000};

std::atomic<uint32_t> g_agent_counter{0};

}  // namespace

Agent::Agent(const AgentOptions& options, EventSink& sink)
    : name_(options.name),
      sink_(sink),
      stripe_threshold_(options.stripe_threshold),
      express_max_bytes_(options.express_max_bytes),
      small_max_bytes_(options.express_max_bytes) {
  if (name_.empty() || name_.size() > kMaxNameBytes) {
    throw Error(code::kInvalidArgument, "agent name must be 1..255 bytes");
  }
  // Without a table same-host peers cannot confirm what is advertised and keep to the provider; the agent
  // still works.
  try {
    table_ = std::make_unique<RegionTable>();
  } catch (const Error&) {
    table_.reset();
  }
  OpenRails(options);
  // No express lane on shm: its sends (and its READs when cross-memory attach is refused) take a spinlock in
  // the peer's shared region, and a peer killed while holding it leaves the caller spinning inside the
  // provider for ever (measured: a killed peer hung the process). On a rail thread that is survivable (the
  // rail is orphaned at close); on the owner thread (the binding's JS thread) it would freeze the whole process.
  if (provider_ == "shm") express_max_bytes_ = 0;
  for (auto& rail : rails_) rail->Start();
  RegisterLiveAgent(this);
}

Agent::~Agent() {
  CloseNow();
  UnregisterLiveAgent(this);
}

void Agent::OpenRails(const AgentOptions& options) {
  if (!LibfabricLoadError().empty()) throw Error(code::kProviderUnavailable, LibfabricLoadError());
  fi_info* hints = fi_allocinfo();
  if (hints == nullptr) throw Error(code::kAlloc, "fi_allocinfo failed");
  hints->caps = FI_MSG | FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE | FI_SEND | FI_RECV;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->ep_attr->type = FI_EP_RDM;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY | FI_MR_ENDPOINT;
  if (options.hmem) {
    hints->caps |= FI_HMEM;
    hints->domain_attr->mr_mode |= FI_MR_HMEM;
  }
  hmem_ = options.hmem;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->fabric_attr->prov_name = strdup(options.provider.c_str());
  if (!options.domain.empty()) hints->domain_attr->name = strdup(options.domain.c_str());

  fi_info* list = nullptr;
  const char* node = options.node.empty() ? nullptr : options.node.c_str();
  int rc = fi_getinfo(FI_VERSION(1, 9), node, nullptr, node != nullptr ? FI_SOURCE : 0, hints, &list);
  fi_freeinfo(hints);
  if (rc != 0 || list == nullptr) {
    std::string what = "no libfabric provider '" + options.provider + "' with FI_EP_RDM, RMA and messaging";
    if (options.hmem) what += " and FI_HMEM";
    if (node != nullptr) what += " bound to " + options.node;
    if (!options.domain.empty()) what += " in domain " + options.domain;
    throw Error(code::kProviderUnavailable, what + (rc != 0 ? std::string(": ") + fi_strerror(-rc) : ""),
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
      if (chosen == nullptr) throw Error(code::kAlloc, "fi_dupinfo failed");
      if (chosen->addr_format == FI_ADDR_STR && provider_ == "shm") {
        // shm names its endpoint after the process id by default, so a second endpoint in one process
        // would collide; give every rail of every agent its own name (core/shm_regions.h).
        if (r == 0) ReclaimStaleShmRegions();
        std::string addr = "fi_shm://" + ShmEndpointName(agent_number, r);
        free(chosen->src_addr);
        chosen->src_addr = strdup(addr.c_str());
        chosen->src_addrlen = addr.size() + 1;
      }
      rails_.push_back(std::make_unique<Rail>(r, chosen, this, r == 0 ? kNotificationMessageMax : 0,
                                              std::chrono::microseconds(options.busy_poll_us)));
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

uint32_t Agent::RegisterMemory(void* data, size_t length, bool remote_access) {
  return AddRegion(data, length, remote_access, nullptr);
}

uint32_t Agent::RegisterDeviceMemory(void* data, size_t length, const HmemTarget& target, bool remote_access) {
  if (!hmem_) {
    throw Error(code::kInvalidArgument, "agent '" + name_ + "' was opened without FI_HMEM: " + provider_ +
                                            " cannot register device memory here");
  }
  return AddRegion(data, length, remote_access, &target);
}

uint32_t Agent::AddRegion(void* data, size_t length, bool remote_access, const HmemTarget* hmem) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  if (length == 0) throw Error(code::kZeroLength, "cannot register an empty buffer");
  auto region = std::make_unique<Region>();
  region->data = static_cast<uint8_t*>(data);
  region->length = length;
  region->remote_access = remote_access;
  region->device = hmem != nullptr;
  if (hmem == nullptr) FindShared(data, length, &region->share);
  std::lock_guard<std::mutex> lock(regions_mu_);
  region->id = remote_access ? NextTableIdLocked() : next_region_++;
  try {
    const uint64_t flags = remote_access ? FI_REMOTE_READ | FI_REMOTE_WRITE : 0;
    for (auto& rail : rails_) region->mrs.push_back(rail->RegisterMemory(data, length, flags, true, hmem));
  } catch (...) {
    for (auto& mr : region->mrs) Rail::CloseMr(mr);
    throw;
  }
  const uint32_t id = region->id;
  if (remote_access && table_) table_->Publish(id, reinterpret_cast<uintptr_t>(data), length);
  regions_.emplace(id, std::move(region));
  return id;
}

void Agent::DeregisterMemory(uint32_t id) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = regions_.find(id);
  if (it == regions_.end()) throw Error(code::kUnknownRegion, "region " + std::to_string(id) + " is not registered");
  if (it->second->inflight > 0) {
    throw Error(code::kBusy, "region " + std::to_string(id) + " has " + std::to_string(it->second->inflight) +
                                 " transfers in flight");
  }
  // Grants end with their region. Same-host readers stop first (they check the table before every copy), then
  // the provider's keys go.
  for (auto g = grants_.begin(); g != grants_.end();) {
    if (g->second.region != id) {
      ++g;
      continue;
    }
    RevokeLocked(g);
    g = grants_.erase(g);
  }
  if (table_) table_->Withdraw(id);
  for (auto& mr : it->second->mrs) Rail::CloseMr(mr);
  regions_.erase(it);
}

std::vector<const Region*> Agent::ListRegions() const {
  std::lock_guard<std::mutex> lock(regions_mu_);
  std::vector<const Region*> out;
  for (const auto& [id, r] : regions_) {
    if (!r->internal && r->remote_access) out.push_back(r.get());
  }
  return out;
}

uint32_t Agent::AddPeer(const std::string& name, const PeerOptions& options,
                        const std::vector<std::vector<uint8_t>>& addresses, std::map<uint32_t, RemoteRegion> regions) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  if (addresses.empty()) throw Error(code::kBadMetadata, "peer advertises no rails");
  for (const auto& [id, region] : regions) {
    if (region.keys.size() != addresses.size()) {
      throw Error(code::kBadMetadata, "region " + std::to_string(id) + " has " + std::to_string(region.keys.size()) +
                                          " keys for " + std::to_string(addresses.size()) + " rails");
    }
  }
  Peer peer;
  peer.name = name;
  peer.virt_addr = options.virt_addr;
  if (options.host_pid > 0) {
    // Same host by the peer's word. Nothing of that pid is touched until its table is confirmed: a forged
    // pid leads nowhere.
    peer.table = PeerRegionTable::Open(options.host_pid, options.table, &peer.table_refused);
  }
  if (options.fast_path && options.host_pid > 0 && !regions.empty()) {
    // Probe on a region the table says is advertised, and check the kernel lets us in before every
    // transfer relies on it.
    auto live = std::find_if(regions.begin(), regions.end(), [&](const auto& r) {
      return peer.table && peer.table->Live(r.first, r.second.base, r.second.length);
    });
    if (!peer.table) {
      peer.cma_refused = "region table not confirmed: " + peer.table_refused;
    } else if (live == regions.end()) {
      peer.cma_refused = "the peer's table advertises none of the regions in its metadata";
    } else {
      peer.cma_refused = CmaProbe(options.host_pid, live->second.base, 1);
      if (peer.cma_refused.empty()) peer.cma_pid = options.host_pid;
    }
  } else if (options.fast_path && options.host_pid > 0 && peer.table) {
    peer.probe_pid = options.host_pid;  // it advertises nothing to probe on: its first grant is probed (AddGrant)
  }
  if (peer.cma_pid > 0) MapSharedRegions(peer, regions);
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

void Agent::MapSharedRegions(Peer& peer, std::map<uint32_t, RemoteRegion>& regions) {
  for (auto& [id, region] : regions) {
    if (!region.share.valid() || !peer.table->Live(id, region.base, region.length)) continue;
    if (!peer.watch) {
      peer.watch = WatchProcess(peer.cma_pid, &peer.map_refused);
      if (!peer.watch) return;
    }
    std::string why;
    region.mapping = MapPeerRegion(peer.cma_pid, region.share, region.length, &why);
    if (!region.mapping && peer.map_refused.empty()) peer.map_refused = why;
  }
}

void Agent::RemovePeer(uint32_t id) {
  // Addresses stay in the AVs: transfers in flight may still use them, and they are freed with the rails.
  if (peers_.erase(id) == 0) throw Error(code::kUnknownPeer, "peer " + std::to_string(id) + " is not loaded");
}

Peer& Agent::PeerOrThrow(uint32_t id) {
  auto it = peers_.find(id);
  if (it == peers_.end()) throw Error(code::kUnknownPeer, "peer " + std::to_string(id) + " is not loaded");
  return it->second;
}

void Agent::OnPartDone(Transfer* t, const ErrorInfo* error) {
  if (error != nullptr) {
    std::lock_guard<std::mutex> lock(t->error_mu);
    if (t->error.ok()) t->error = *error;
  }
  if (t->remaining.fetch_sub(1) != 1) return;
  // The last part: every other part recorded its error (under the lock) before counting itself down.
  bool failed;
  {
    std::lock_guard<std::mutex> lock(t->error_mu);
    failed = !t->error.ok();
  }
  DataDone(t, failed);
}

void Agent::DataDone(Transfer* t, bool failed) {
  if (t->notify_op && !t->notify_posted && !failed && !halting()) {
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
  const bool awaited = t->pickup == Pickup::kSpin;  // `t` is gone once it leaves transfers_
  Event ev;
  ev.type = Event::Type::kTransferDone;
  ev.transfer_id = t->id;
  ev.error = t->error;
  ev.bytes = t->bytes;
  ev.rails_mask = t->rails_mask;
  ev.post_ns = t->posted_ns;
  ev.provider_post_ns = t->provider_post_ns;
  ev.ops = t->path == TransferPath::kFabric ? t->ops.size() : t->cma_segments;
  ev.path = t->path;
  ev.express = t->pickup == Pickup::kInline ||
               std::any_of(t->ops.begin(), t->ops.end(), [](const Op& op) { return op.express; });
  ev.duration_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t->start).count());
  for (Region* r : t->regions) --r->inflight;
  {
    std::lock_guard<std::mutex> lock(transfers_mu_);
    transfers_.erase(t->id);
  }
  transfers_cv_.notify_all();
  sink_.Push(std::move(ev));
  if (awaited) --awaited_in_flight_;  // after the push, so a spinning reader sees the event before the count drops
}

void Agent::OnMessage(const uint8_t* data, size_t length) {
  Event ev;
  ev.type = Event::Type::kNotification;
  // Control messages come from the network: malformed ones are dropped.
  if (DecodeNotification(data, length, &ev.from, &ev.data)) sink_.Push(std::move(ev));
}

size_t Agent::ReapExpress() {
  std::lock_guard<std::mutex> lock(express_mu_);
  if (express_off_) return 0;
  size_t left = 0;
  for (auto& rail : rails_) left += rail->ReapExpress();
  return left;
}

size_t Agent::transfers_in_flight() {
  std::lock_guard<std::mutex> lock(transfers_mu_);
  return transfers_.size();
}

Agent::State Agent::Advance(State to) {
  State now = state_.load();
  while (now < to && !state_.compare_exchange_weak(now, to)) {
  }
  return now;
}

void Agent::BeginClose(uint32_t timeout_ms) {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (Advance(State::kDraining) != State::kOpen) return;
  closer_ = std::thread([this, timeout_ms] {
    {
      std::unique_lock<std::mutex> lock(transfers_mu_);
      transfers_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                             [this] { return transfers_.empty() || halting(); });
    }
    Shutdown();
  });
}

void Agent::CloseNow() {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (closer_.joinable()) {
    Advance(State::kHalting);
    transfers_cv_.notify_all();
    closer_.join();
    return;
  }
  Shutdown();
}

void Agent::HaltRails() {
  std::lock_guard<std::mutex> lock(close_mu_);
  if (closed()) return;
  Advance(State::kHalting);
  if (closer_.joinable()) {  // a graceful close is under way: finish it now
    transfers_cv_.notify_all();
    closer_.join();
    return;
  }
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
  if (Advance(State::kClosed) == State::kClosed) return;
  {
    std::lock_guard<std::mutex> lock(express_mu_);
    express_off_ = true;
  }
  if (table_) table_->WithdrawAll();
  StopRails();
  // A forced close abandons whatever is in flight. Where closing an endpoint under an arriving READ response
  // crashes the provider (libfabric < 1.18, tcp: Rail::Quiesce), those READs are let finish first, without
  // their owners (the transfers still fail with KVF_ERR_CLOSED below); a rail whose READs do not finish in
  // time is leaked like one whose thread is stuck: its endpoint is never closed nor driven again, so nothing
  // is written into its buffers (or the JS memory it pointed at) after close resolves.
  const auto drain_deadline = std::chrono::steady_clock::now() + kReadDrainTimeout;
  for (auto& rail : rails_) {
    if (!rail->Quiesce(drain_deadline)) {
      leaked_rails_.insert(rail->index());
      (void)rail.release();
    }
  }
  rails_.erase(std::remove(rails_.begin(), rails_.end(), nullptr), rails_.end());
  std::vector<RailMr> mrs;
  {
    std::lock_guard<std::mutex> lock(regions_mu_);
    for (auto& [id, region] : regions_) {
      for (size_t r = 0; r < region->mrs.size(); ++r) {
        if (leaked_rails_.count(static_cast<uint32_t>(r)) == 0) mrs.push_back(region->mrs[r]);
      }
    }
    regions_.clear();
    for (auto& [id, grant] : grants_) {
      for (size_t r = 0; r < grant.mrs.size(); ++r) {
        if (leaked_rails_.count(static_cast<uint32_t>(r)) == 0) mrs.push_back(grant.mrs[r]);
      }
    }
    grants_.clear();
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
    ev.error = t->error.ok() ? ErrorInfo{code::kClosed, "agent closed with the transfer in flight", 0, {}} : t->error;
    ev.bytes = t->bytes;
    sink_.Push(std::move(ev));
    if (t->pickup == Pickup::kSpin) --awaited_in_flight_;
  }
  peers_.clear();
  Event closed;
  closed.type = Event::Type::kClosed;
  sink_.Push(std::move(closed));
}

}  // namespace kvf
