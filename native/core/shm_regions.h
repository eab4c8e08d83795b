// Names of this process's shm endpoints, and reclaiming the regions that killed processes left in /dev/shm.
//
// libfabric's shm provider backs every endpoint with a file in /dev/shm that only its fi_close (or libfabric's
// library destructor) unlinks. A process killed with SIGKILL, or OOM-killed, leaves them: 16 MiB each with
// libfabric 1.17, against a /dev/shm that container runtimes size at 64 MiB by default, so a few restarted
// workers fill it and the next shm endpoint fails. Each process therefore holds an flock on a marker file for
// as long as it lives; a file whose marker nobody holds belongs to a process that is gone. Liveness by lock,
// not by pid: containers of one pod can share /dev/shm while each has its own pid numbers.
#pragma once

#include <cstdint>
#include <string>

namespace kvf {

// "kvf_<pid>_<nonce>_<agent>_<rail>": unique per process (the random nonce keeps a new process clear of a
// dead one's files under a reused pid) and per rail. The first call takes this process's marker lock.
std::string ShmEndpointName(uint32_t agent, uint32_t rail);

// Unlinks the endpoint files of processes whose marker is no longer locked, and their markers; returns how
// many files it removed. Files of processes that are alive, and files without a marker, are left alone.
size_t ReclaimStaleShmRegions(const std::string& dir = "/dev/shm");

// At exit, without fi_close: this process's own endpoint files and marker.
void UnlinkOwnShmRegions();

}  // namespace kvf
