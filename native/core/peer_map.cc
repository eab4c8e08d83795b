#include "core/peer_map.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kvf {

PeerMapping::~PeerMapping() { munmap(map_base_, map_length_); }

std::shared_ptr<PeerMapping> MapPeerRegion(pid_t pid, const SharedLocation& where, uint64_t length, std::string* why) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(where.fd);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    *why = "open " + path + ": " + std::strerror(errno);
    return nullptr;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_ino) != where.inode ||
      static_cast<uint64_t>(st.st_size) < where.offset + length) {
    close(fd);
    *why = path + " is not the peer's shared region (inode or size differ)";
    return nullptr;
  }
  // mmap offsets must be page-aligned: 4 KiB for memfd memory, the hugepage size for MFD_HUGETLB (st_blksize).
  const uint64_t page =
      std::max<uint64_t>(static_cast<uint64_t>(sysconf(_SC_PAGESIZE)), static_cast<uint64_t>(st.st_blksize));
  const uint64_t start = where.offset / page * page;
  const size_t map_length = static_cast<size_t>(where.offset + length - start);
  void* base = mmap(nullptr, map_length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(start));
  const int e = errno;
  close(fd);  // the mapping holds the file
  if (base == MAP_FAILED) {
    *why = "mmap " + path + ": " + std::strerror(e);
    return nullptr;
  }
  return std::make_shared<PeerMapping>(base, map_length, static_cast<uint8_t*>(base) + (where.offset - start));
}

ProcessWatch::~ProcessWatch() { close(pidfd_); }

bool ProcessWatch::Gone() {
  const int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  if (now - alive_at_ns_.load(std::memory_order_relaxed) < std::chrono::nanoseconds(kFreshFor).count()) return false;
  // A pidfd polls readable once the process has exited.
  pollfd p{pidfd_, POLLIN, 0};
  if (poll(&p, 1, 0) > 0) return true;
  alive_at_ns_.store(now, std::memory_order_relaxed);
  return false;
}

std::shared_ptr<ProcessWatch> WatchProcess(pid_t pid, std::string* why) {
  const int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) {
    *why = std::string("pidfd_open: ") + std::strerror(errno);
    return nullptr;
  }
  return std::make_shared<ProcessWatch>(fd);
}

}  // namespace kvf
