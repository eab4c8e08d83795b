#include "core/host_memory.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"

namespace kvf {

namespace {
constexpr size_t kHugePage = 2u << 20;
constexpr size_t kPage = 4096;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct SharedEntry {
  size_t mapped = 0;
  SharedLocation where;
};

// Shared allocations by base address, for FindShared (memory registration asks).
std::mutex g_shared_mu;
std::map<uintptr_t, SharedEntry> g_shared;

[[noreturn]] void AllocFailed(const std::string& what, size_t bytes) {
  int e = errno;
  throw Error(code::kAlloc, "cannot " + what + " " + std::to_string(bytes) + " bytes: " + std::strerror(e));
}

// Large regions: 2 MiB-aligned with MADV_HUGEPAGE. THP in "madvise" mode, the common default, only backs
// regions that ask; fewer pages to pin is what makes cross-memory attach and memory registration fast.
// Where THP is off this is plain 4 KiB memory.
void* MapAligned(size_t mapped, bool large, int fd) {
  const size_t slack = large ? kHugePage : 0;
  // Reserve an aligned window, then (shared) map the file over it.
  const int reserve = fd >= 0 ? MAP_NORESERVE : 0;  // shared: only an address window, the file holds the pages
  void* p = mmap(nullptr, mapped + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | reserve, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  uint8_t* base = static_cast<uint8_t*>(p);
  if (large) {
    uint8_t* aligned = reinterpret_cast<uint8_t*>(RoundUp(reinterpret_cast<uintptr_t>(base), kHugePage));
    if (aligned > base) munmap(base, static_cast<size_t>(aligned - base));
    const size_t tail = static_cast<size_t>(base + mapped + slack - (aligned + mapped));
    if (tail > 0) munmap(aligned + mapped, tail);
    base = aligned;
  }
  if (fd >= 0 && mmap(base, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
    munmap(base, mapped);
    return nullptr;
  }
  if (large) madvise(base, mapped, MADV_HUGEPAGE);  // advisory: failure leaves ordinary pages
  return base;
}
}  // namespace

HostAllocation AllocateHost(size_t length, bool hugepages, bool require_hugepages, Share share) {
  if (length == 0) throw Error(code::kZeroLength, "cannot allocate 0 bytes");
  HostAllocation a;
  a.length = length;
  if (hugepages) {
    a.mapped = RoundUp(length, kHugePage);
    void* p = MAP_FAILED;
    if (share != Share::kNo) {
      const int fd = memfd_create("kvfabric-region", MFD_CLOEXEC | MFD_HUGETLB);
      if (fd >= 0 && ftruncate(fd, static_cast<off_t>(a.mapped)) == 0) {
        p = mmap(nullptr, a.mapped, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      }
      if (p != MAP_FAILED) {
        a.fd = fd;
      } else if (fd >= 0) {
        close(fd);
      }
    } else {
      p = mmap(nullptr, a.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    }
    if (p != MAP_FAILED) {
      a.data = p;
      a.hugepages = true;
    } else if (require_hugepages) {
      int e = errno;
      throw Error(code::kAlloc, "cannot map " + std::to_string(a.mapped) +
                                    " bytes of 2 MiB hugepages: " + std::strerror(e) +
                                    " (reserve them with vm.nr_hugepages or the pod's hugepages-2Mi limit)");
    }
  }
  if (a.data == nullptr) {
    const bool large = length >= kHugePage;
    a.mapped = RoundUp(length, large ? kHugePage : kPage);
    const bool shared = share == Share::kYes || (share == Share::kAuto && SharedHugepagesAvailable());
    if (shared) {
      a.fd = memfd_create("kvfabric-region", MFD_CLOEXEC);
      if (a.fd < 0) AllocFailed("create a memfd for", a.mapped);
      if (ftruncate(a.fd, static_cast<off_t>(a.mapped)) != 0) {
        const int e = errno;
        close(a.fd);
        errno = e;
        AllocFailed("size a memfd to", a.mapped);
      }
    }
    a.data = MapAligned(a.mapped, large, a.fd);
    if (a.data == nullptr) {
      const int e = errno;
      if (a.fd >= 0) close(a.fd);
      errno = e;
      AllocFailed("map", a.mapped);
    }
  }
  if (a.fd >= 0) {
    struct stat st {};
    fstat(a.fd, &st);
    std::lock_guard<std::mutex> lock(g_shared_mu);
    g_shared[reinterpret_cast<uintptr_t>(a.data)] =
        SharedEntry{a.mapped, SharedLocation{a.fd, static_cast<uint64_t>(st.st_ino), 0}};
  }
  return a;
}

void FreeHost(const HostAllocation& a) {
  if (a.data == nullptr) return;
  if (a.fd >= 0) {
    {
      std::lock_guard<std::mutex> lock(g_shared_mu);
      g_shared.erase(reinterpret_cast<uintptr_t>(a.data));
    }
    close(a.fd);  // peers that mapped the memory keep their mapping; the pages live until they unmap
  }
  munmap(a.data, a.mapped);
}

bool FindShared(const void* data, size_t length, SharedLocation* out) {
  const uintptr_t p = reinterpret_cast<uintptr_t>(data);
  std::lock_guard<std::mutex> lock(g_shared_mu);
  auto it = g_shared.upper_bound(p);
  if (it == g_shared.begin()) return false;
  --it;
  if (p + length > it->first + it->second.mapped) return false;
  *out = it->second.where;
  out->offset = p - it->first;
  return true;
}

bool SharedHugepagesAvailable() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
  std::string line;
  if (!std::getline(f, line)) return false;
  // The active mode is the bracketed word.
  const size_t open = line.find('['), close = line.find(']');
  if (open == std::string::npos || close == std::string::npos || close <= open) return false;
  const std::string mode = line.substr(open + 1, close - open - 1);
  return mode != "never" && mode != "deny";
}

}  // namespace kvf
