#include "core/host_memory.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"

namespace kvf {

namespace {
constexpr size_t kHugePage = 2u << 20;
constexpr size_t kPage = 4096;

size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }
}  // namespace

HostAllocation AllocateHost(size_t length, bool hugepages, bool require_hugepages) {
  if (length == 0) throw Error("KVF_ERR_ZERO_LENGTH", "cannot allocate 0 bytes");
  HostAllocation a;
  a.length = length;
  if (hugepages) {
    a.mapped = RoundUp(length, kHugePage);
    void* p = mmap(nullptr, a.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (p != MAP_FAILED) {
      a.data = p;
      a.hugepages = true;
      return a;
    }
    if (require_hugepages) {
      int e = errno;
      throw Error("KVF_ERR_ALLOC",
                  "cannot map " + std::to_string(a.mapped) + " bytes of 2 MiB hugepages: " + std::strerror(e) +
                      " (reserve them with vm.nr_hugepages or the pod's hugepages-2Mi limit)");
    }
  }
  // Without reserved hugepages, ask for transparent ones: 2 MiB-aligned and MADV_HUGEPAGE (THP in "madvise"
  // mode, the common default, only backs regions that ask). Fewer pages to pin is what makes cross-memory
  // attach and memory registration fast; where THP is off this is plain 4 KiB memory.
  const bool large = length >= kHugePage;
  a.mapped = RoundUp(length, large ? kHugePage : kPage);
  const size_t slack = large ? kHugePage : 0;
  void* p = mmap(nullptr, a.mapped + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    throw Error("KVF_ERR_ALLOC", "cannot map " + std::to_string(a.mapped) + " bytes: " + std::strerror(e));
  }
  uint8_t* base = static_cast<uint8_t*>(p);
  if (large) {
    uint8_t* aligned = reinterpret_cast<uint8_t*>(RoundUp(reinterpret_cast<uintptr_t>(base), kHugePage));
    if (aligned > base) munmap(base, static_cast<size_t>(aligned - base));
    const size_t tail = static_cast<size_t>(base + a.mapped + slack - (aligned + a.mapped));
    if (tail > 0) munmap(aligned + a.mapped, tail);
    base = aligned;
    madvise(base, a.mapped, MADV_HUGEPAGE);  // advisory: failure leaves ordinary pages
  }
  a.data = base;
  return a;
}

void FreeHost(const HostAllocation& a) {
  if (a.data != nullptr) munmap(a.data, a.mapped);
}

}  // namespace kvf
