#include "core/region_table.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"
#include "core/error_codes.h"
#include "core/random_key.h"

namespace kvf {

namespace {

constexpr uint64_t kMagic = 0x3142415446564b;  // "KVFTAB1"
constexpr uint32_t kVersion = 2;               // 2: entries carry access bits (grants)

struct Header {
  uint64_t magic;
  uint32_t version;
  uint32_t capacity;
  TableNonce nonce;
  uint8_t pad[32];
};
static_assert(sizeof(Header) == 64, "the header is one cache line");
static_assert(sizeof(RegionTableEntry) == 32, "entries are 32 bytes");
static_assert(std::atomic<uint64_t>::is_always_lock_free, "tags must be lock-free across processes");

constexpr size_t kTableBytes = sizeof(Header) + sizeof(RegionTableEntry) * RegionTable::kCapacity;

uint64_t Tag(uint32_t id) { return (static_cast<uint64_t>(id) << 32) | 1; }

}  // namespace

RegionTable::RegionTable() {
  const int fd = memfd_create("kvfabric-region-table", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw Error(code::kAlloc, std::string("memfd_create (region table): ") + std::strerror(errno));
  void* map = MAP_FAILED;
  struct stat st {};
  if (ftruncate(fd, static_cast<off_t>(kTableBytes)) == 0 && fstat(fd, &st) == 0) {
    map = mmap(nullptr, kTableBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  if (map == MAP_FAILED) {
    const int e = errno;
    close(fd);
    throw Error(code::kAlloc, std::string("region table: ") + std::strerror(e));
  }
  // A reader maps it read-only and must not see it shrink under it (SIGBUS): no resizing from here on.
  fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  map_ = map;
  map_length_ = kTableBytes;
  Header* h = static_cast<Header*>(map);
  h->magic = kMagic;
  h->version = kVersion;
  h->capacity = kCapacity;
  RandomBytes(h->nonce.data(), h->nonce.size());
  entries_ = reinterpret_cast<RegionTableEntry*>(static_cast<uint8_t*>(map) + sizeof(Header));
  location_.fd = fd;
  location_.inode = static_cast<uint64_t>(st.st_ino);
  location_.nonce = h->nonce;
}

RegionTable::~RegionTable() {
  WithdrawAll();
  munmap(map_, map_length_);
  close(location_.fd);
}

bool RegionTable::SlotFree(uint32_t id) const {
  return entries_[id % kCapacity].tag.load(std::memory_order_relaxed) == 0;
}

void RegionTable::Publish(uint32_t id, uint64_t base, uint64_t length, uint64_t access) {
  RegionTableEntry& e = entries_[id % kCapacity];
  e.base = base;
  e.length = length;
  e.access = access;
  e.tag.store(Tag(id), std::memory_order_release);  // base and length are visible before the tag
}

void RegionTable::Withdraw(uint32_t id) {
  RegionTableEntry& e = entries_[id % kCapacity];
  uint64_t expected = Tag(id);
  // seq_cst: ordered before everything the caller does next (closing the MRs, freeing the memory).
  e.tag.compare_exchange_strong(expected, 0, std::memory_order_seq_cst);
}

void RegionTable::WithdrawAll() {
  for (uint32_t i = 0; i < kCapacity; ++i) {
    if (entries_[i].tag.load(std::memory_order_relaxed) != 0) entries_[i].tag.store(0, std::memory_order_seq_cst);
  }
}

std::shared_ptr<PeerRegionTable> PeerRegionTable::Open(pid_t pid, const TableLocation& where, std::string* why) {
  if (pid <= 0 || where.fd < 0) {
    *why = "the peer publishes no region table";
    return nullptr;
  }
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(where.fd);
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *why = "open " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_ino) != where.inode ||
      static_cast<uint64_t>(st.st_size) != kTableBytes) {
    close(fd);
    *why = path + " is not the peer's region table (inode or size differ)";
    return nullptr;
  }
  void* map = mmap(nullptr, kTableBytes, PROT_READ, MAP_SHARED, fd, 0);
  const int e = errno;
  close(fd);
  if (map == MAP_FAILED) {
    *why = "mmap " + path + ": " + std::strerror(e);
    return nullptr;
  }
  auto table = std::make_shared<PeerRegionTable>(map, kTableBytes);
  const Header* h = static_cast<const Header*>(map);
  if (h->magic != kMagic || h->version != kVersion || h->capacity != RegionTable::kCapacity ||
      h->nonce != where.nonce) {
    *why = path + " is not the peer's region table (header or nonce differ)";
    return nullptr;
  }
  return table;
}

PeerRegionTable::PeerRegionTable(const void* map, size_t length)
    : map_(map),
      map_length_(length),
      entries_(reinterpret_cast<const RegionTableEntry*>(static_cast<const uint8_t*>(map) + sizeof(Header))) {}

PeerRegionTable::~PeerRegionTable() { munmap(const_cast<void*>(map_), map_length_); }

bool PeerRegionTable::Live(uint32_t id, uint64_t base, uint64_t length, uint64_t need) const {
  const RegionTableEntry& e = entries_[id % RegionTable::kCapacity];
  if (e.tag.load(std::memory_order_acquire) != Tag(id)) return false;
  return e.base == base && length <= e.length && (e.access & need) == need;
}

}  // namespace kvf
