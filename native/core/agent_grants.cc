// Grants: per-request, revocable remote access to part of a region. The owner registers the sub-range again
// on every rail (libfabric allows overlapping registrations) with fresh random keys and exactly one remote
// flag, so the provider refuses anything else, and publishes it in the region table under its own id with
// that one access bit, so that same-host readers (cross-memory attach, mappings, shm) refuse it too. The
// region itself may be registered without remote access. Revoking clears the table entry, then closes the
// MRs. The reader adds a grant as a remote region of its owner under the grant's id.
#include <rdma/fi_domain.h>

#include "core/agent.h"
#include "core/error_codes.h"

namespace kvf {

uint32_t Agent::NextTableIdLocked() {
  uint32_t id = next_region_++;
  if (!table_) return id;
  // An advertised region's (or grant's) id picks its slot in the table: skip ids whose slot is taken.
  for (uint32_t tries = 0; !table_->SlotFree(id); ++tries) {
    if (tries >= RegionTable::kCapacity) {
      throw Error(code::kTooLarge, "the region table is full: " + std::to_string(RegionTable::kCapacity) +
                                       " remotely accessible regions and grants are live");
    }
    id = next_region_++;
  }
  return id;
}

GrantInfo Agent::Grant(uint32_t region_id, uint64_t offset, uint64_t length, uint64_t access) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  if (access != kAccessRead && access != kAccessWrite)
    throw Error(code::kInvalidArgument, "a grant is for read or for write");
  if (length == 0) throw Error(code::kZeroLength, "a grant needs at least one byte");
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = regions_.find(region_id);
  if (it == regions_.end() || it->second->internal) {
    throw Error(code::kUnknownRegion, "region " + std::to_string(region_id) + " is not registered");
  }
  const Region& region = *it->second;
  if (region.device)
    throw Error(code::kInvalidArgument,
                "region " + std::to_string(region_id) + " is device memory: it cannot be granted");
  if (offset > region.length || length > region.length - offset) {
    throw Error(code::kOutOfRange, "grant [" + std::to_string(offset) + ", " + std::to_string(offset + length) +
                                       ") exceeds region " + std::to_string(region_id) + " of " +
                                       std::to_string(region.length) + " bytes");
  }
  GrantRecord g;
  g.id = NextTableIdLocked();
  g.region = region_id;
  g.data = region.data + offset;
  g.length = length;
  g.access = access;
  const uint64_t flags = access == kAccessRead ? FI_REMOTE_READ : FI_REMOTE_WRITE;
  try {
    for (auto& rail : rails_) g.mrs.push_back(rail->RegisterMemory(g.data, length, flags, false));
  } catch (...) {
    for (auto& mr : g.mrs) Rail::CloseMr(mr);
    throw;
  }
  GrantInfo out;
  out.id = g.id;
  out.slot = g.id % RegionTable::kCapacity;
  out.base = reinterpret_cast<uintptr_t>(g.data);
  for (const auto& mr : g.mrs) out.keys.push_back(mr.key);
  if (region.share.valid()) {
    out.share = region.share;
    out.share.offset += offset;
  }
  if (table_) table_->Publish(g.id, out.base, length, access);  // last: the grant is usable from here on
  grants_.emplace(g.id, std::move(g));
  return out;
}

void Agent::RevokeLocked(std::map<uint32_t, GrantRecord>::iterator it) {
  // Same-host readers check the entry before every copy: after this no new copy starts. Then the provider's
  // keys go: a remote op that arrives later is refused by the provider.
  if (table_) table_->Withdraw(it->first);
  for (auto& mr : it->second.mrs) Rail::CloseMr(mr);
}

bool Agent::Revoke(uint32_t grant) {
  std::lock_guard<std::mutex> lock(regions_mu_);
  auto it = grants_.find(grant);
  if (it == grants_.end()) return false;  // revoked already, or ended with its region or the agent
  RevokeLocked(it);
  grants_.erase(it);
  return true;
}

size_t Agent::live_grants() const {
  std::lock_guard<std::mutex> lock(regions_mu_);
  return grants_.size();
}

void Agent::AddGrant(uint32_t peer_id, uint32_t grant, RemoteRegion region) {
  if (closing()) throw Error(code::kClosed, "agent is closed");
  Peer& peer = PeerOrThrow(peer_id);
  const std::string what = "grant " + std::to_string(grant) + " of peer '" + peer.name + "'";
  if (region.keys.size() != peer.remote_rails) {
    throw Error(code::kBadMetadata, what + " has " + std::to_string(region.keys.size()) + " keys for " +
                                        std::to_string(peer.remote_rails) + " rails");
  }
  if (region.access != kAccessRead && region.access != kAccessWrite)
    throw Error(code::kBadMetadata, what + " has no valid access");
  if (peer.regions.count(grant) != 0)
    throw Error(code::kInvalidArgument, what + " is added already (or its id is a region's)");
  // On this host the owner's table says whether the grant is live, for this range and access: a revoked
  // grant's bytes are refused here already (on another host, the provider refuses its keys at first use).
  if (peer.table && !peer.table->Live(grant, region.base, region.length, region.access)) {
    throw Error(code::kRemoteAccess, what + " is not live in its owner's region table (revoked, or forged)");
  }
  if (peer.probe_pid > 0) {
    // A peer that advertised no region (a pool kept to grants) gets the fast path probed on its first grant.
    peer.cma_refused = CmaProbe(peer.probe_pid, region.base, 1);
    if (peer.cma_refused.empty()) peer.cma_pid = peer.probe_pid;
    peer.probe_pid = 0;
  }
  if (peer.cma_pid > 0 && region.share.valid()) {
    std::string why;
    if (!peer.watch) peer.watch = WatchProcess(peer.cma_pid, &why);
    if (peer.watch) region.mapping = MapPeerRegion(peer.cma_pid, region.share, region.length, &why);
  } else {
    region.share = SharedLocation{};
  }
  peer.regions.emplace(grant, std::move(region));
}

void Agent::RemoveGrant(uint32_t peer_id, uint32_t grant) {
  Peer& peer = PeerOrThrow(peer_id);
  auto it = peer.regions.find(grant);
  if (it == peer.regions.end() || it->second.access == (kAccessRead | kAccessWrite)) {
    throw Error(code::kUnknownRegion, "peer '" + peer.name + "' has no grant " + std::to_string(grant) + " added here");
  }
  // Prepared lists that name it keep a pointer to it: like a reloaded peer, they must be prepared again.
  peer.regions.erase(it);
}

}  // namespace kvf
