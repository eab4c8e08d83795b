// The region table: which of an agent's regions are advertised right now, in a small memfd that same-host
// peers map read-only. A peer that copies by itself (cross-memory attach, a mapping of shared memory, or the
// shm provider, whose RMA in libfabric 1.17 is a process_vm_readv/writev that checks no key) would otherwise
// keep reading a region after its owner deregistered it. Before every such copy the reader looks at the
// region's entry (one atomic load); deregistration clears the entry before the memory is released.
//
// The table is found through metadata (the owner's pid, the fd number, the file's inode and a random 128-bit
// nonce in the header). A reader that cannot confirm all of them (wrong inode or nonce, process gone, a pid
// that is some other process) does not use the same-host paths for that peer at all: a forged pid in
// metadata must never lead to cross-memory attach on that pid.
#pragma once

#include <sys/types.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kvf {

using TableNonce = std::array<uint8_t, 16>;

// Where a peer's table is: what metadata carries.
struct TableLocation {
  int fd = -1;  // -1: the peer publishes none
  uint64_t inode = 0;
  TableNonce nonce{};
};

// What an entry lets a peer do. Regions allow both; a grant (Agent::Grant) exactly one.
constexpr uint64_t kAccessRead = 1;
constexpr uint64_t kAccessWrite = 2;

// One slot per region (or grant) id modulo the capacity; the owner picks ids whose slot is free.
struct RegionTableEntry {
  std::atomic<uint64_t> tag;  // (id << 32) | 1 while advertised, 0 otherwise; written last, cleared first
  uint64_t base;
  uint64_t length;
  uint64_t access;  // kAccessRead | kAccessWrite bits
};

// The owner's side: created with the agent, written on registration and deregistration.
class RegionTable {
 public:
  // Live regions and grants together: 8 MiB of sparse memfd; only touched pages cost memory.
  static constexpr uint32_t kCapacity = 1u << 18;
  // Throws kvf::Error KVF_ERR_ALLOC when the memfd cannot be created or mapped.
  RegionTable();
  ~RegionTable();
  RegionTable(const RegionTable&) = delete;
  RegionTable& operator=(const RegionTable&) = delete;

  const TableLocation& location() const { return location_; }
  bool SlotFree(uint32_t id) const;
  void Publish(uint32_t id, uint64_t base, uint64_t length, uint64_t access = kAccessRead | kAccessWrite);
  void Withdraw(uint32_t id);
  void WithdrawAll();

 private:
  RegionTableEntry* entries_ = nullptr;
  void* map_ = nullptr;
  size_t map_length_ = 0;
  TableLocation location_;
};

// A reader's side: a peer's table mapped read-only.
class PeerRegionTable {
 public:
  // Opens /proc/<pid>/fd/<fd>, checks inode and nonce, maps it read-only. Null (and why) when any check fails.
  static std::shared_ptr<PeerRegionTable> Open(pid_t pid, const TableLocation& where, std::string* why);
  PeerRegionTable(const void* map, size_t length);
  ~PeerRegionTable();
  PeerRegionTable(const PeerRegionTable&) = delete;
  PeerRegionTable& operator=(const PeerRegionTable&) = delete;

  // Whether region (or grant) `id` is advertised now, with exactly this base, at least this length, and every
  // access bit of `need` (0: any access).
  bool Live(uint32_t id, uint64_t base, uint64_t length, uint64_t need = 0) const;

 private:
  const void* map_;
  size_t map_length_;
  const RegionTableEntry* entries_;
};

}  // namespace kvf
