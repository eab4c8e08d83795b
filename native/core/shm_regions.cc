#include "core/shm_regions.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <vector>

namespace kvf {

namespace {

constexpr char kPrefix[] = "kvf_";
constexpr char kMarkerSuffix[] = ".live";

// "kvf_<pid>_<nonce>": random per process, fixed for its lifetime. Never destroyed: the exit handler that
// unlinks our files (UnlinkOwnShmRegions) runs after the destructors of statics created later than it.
const std::string& ProcessStem() {
  static const std::string* const stem = [] {
    std::random_device rd;
    char text[9];
    std::snprintf(text, sizeof text, "%08x", rd());
    return new std::string(kPrefix + std::to_string(getpid()) + "_" + text);
  }();
  return *stem;
}

// Creates the marker and locks it for the life of the process (the descriptor is never closed; exec drops it).
void HoldMarker() {
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string path = "/dev/shm/" + ProcessStem() + kMarkerSuffix;
    const int fd = open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    // Without a marker our files are simply never reclaimed by others: nothing to fail for.
    if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0) close(fd);
  });
}

bool EndsWith(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, kPrefix, sizeof kPrefix - 1) == 0) names.emplace_back(e->d_name);
    }
    closedir(d);
  }
  return names;
}

}  // namespace

std::string ShmEndpointName(uint32_t agent, uint32_t rail) {
  HoldMarker();
  return ProcessStem() + "_" + std::to_string(agent) + "_" + std::to_string(rail);
}

size_t ReclaimStaleShmRegions(const std::string& dir) {
  const std::vector<std::string> names = List(dir);
  size_t removed = 0;
  for (const std::string& marker : names) {
    if (!EndsWith(marker, kMarkerSuffix)) continue;
    const std::string stem = marker.substr(0, marker.size() - (sizeof kMarkerSuffix - 1));
    if (stem == ProcessStem()) continue;
    const std::string marker_path = dir + "/" + marker;
    const int fd = open(marker_path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    // Held: its process (or a child it forked) is alive. Free: it is gone, and so is anyone using its regions
    // through shm's name lookup; peers that mapped a region keep their mapping after the unlink.
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      const std::string files = stem + "_";
      for (const std::string& name : names) {
        if (name.compare(0, files.size(), files) == 0 && unlink((dir + "/" + name).c_str()) == 0) ++removed;
      }
      // The marker last, while still locked: a second reclaimer finds either the files and the marker or nothing.
      if (unlink(marker_path.c_str()) == 0) ++removed;
    }
    close(fd);
  }
  return removed;
}

void UnlinkOwnShmRegions() {
  const std::string files = ProcessStem() + "_";
  for (const std::string& name : List("/dev/shm")) {
    if (name.compare(0, files.size(), files) == 0 || name == ProcessStem() + kMarkerSuffix) {
      unlink(("/dev/shm/" + name).c_str());
    }
  }
}

}  // namespace kvf
