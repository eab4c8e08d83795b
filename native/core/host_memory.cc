#include "core/host_memory.h"

#include <sys/mman.h>

#include <cerrno>
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
  a.mapped = RoundUp(length, kPage);
  void* p = mmap(nullptr, a.mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    throw Error("KVF_ERR_ALLOC", "cannot map " + std::to_string(a.mapped) + " bytes: " + std::strerror(e));
  }
  a.data = p;
  return a;
}

void FreeHost(const HostAllocation& a) {
  if (a.data != nullptr) munmap(a.data, a.mapped);
}

}  // namespace kvf
