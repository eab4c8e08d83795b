// A loaded peer: its addresses on every rail, the regions it advertises and, on this host, how its memory is
// reached (cross-memory attach, mappings) and checked (its region table).
#pragma once

#include <rdma/fabric.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/peer_map.h"
#include "core/region_table.h"
#include "core/remote_region.h"

namespace kvf {

struct Peer {
  std::string name;
  bool virt_addr = false;
  pid_t cma_pid = 0;        // non-zero: same host, transfers go by cross-memory attach
  pid_t probe_pid = 0;      // same host, fast path asked, nothing advertised yet to probe on (see AddGrant)
  std::string cma_refused;  // why a same-host peer is reached over the fabric instead
  std::string map_refused;  // why a shared region of a same-host peer is copied by cma instead of mapped
  // A same-host peer's region table, confirmed: every transfer to it first checks that its regions are still
  // advertised (the shm provider and the fast path check no keys). Null when not on this host or not confirmed.
  std::shared_ptr<PeerRegionTable> table;
  std::string table_refused;            // why a peer on this host has no confirmed table
  std::shared_ptr<ProcessWatch> watch;  // set when regions are mapped: copies through them check the peer lives
  size_t remote_rails = 0;
  std::vector<std::vector<fi_addr_t>> addrs;  // [local rail][remote rail]
  std::map<uint32_t, RemoteRegion> regions;
};

}  // namespace kvf
