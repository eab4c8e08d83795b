#include "core/cma.h"

#include <algorithm>
#include <climits>
#include <cerrno>
#include <cstring>

#include "core/error_codes.h"

namespace kvf {

namespace {

ErrorInfo CmaError(const CmaJob& job, int err) {
  std::string what = std::string(job.write ? "process_vm_writev" : "process_vm_readv") + " to pid " +
                     std::to_string(job.pid) + " failed: " + std::strerror(err);
  if (err == EPERM)
    what += " (the kernel refused cross-memory attach: another user, or ptrace restrictions; use fastPath: false)";
  if (err == ESRCH) what += " (the peer process is gone)";
  return ErrorInfo{code::kFastPath, what, err, std::strerror(err)};
}

ErrorInfo MappedCopy(const CmaJob& job) {
  for (size_t i = 0; i < job.local.size(); ++i) {
    if (job.write) {
      std::memcpy(job.remote[i].iov_base, job.local[i].iov_base, job.local[i].iov_len);
    } else {
      std::memcpy(job.local[i].iov_base, job.remote[i].iov_base, job.local[i].iov_len);
    }
  }
  // The mapping outlives the peer: what a READ copied after its death is only what it left behind.
  if (job.watch && job.watch->Gone()) {
    return ErrorInfo{
        code::kFastPath,
        "copy through the mapping of pid " + std::to_string(job.pid) + "'s memory failed: the peer process is gone",
        ESRCH, std::strerror(ESRCH)};
  }
  return {};
}

}  // namespace

ErrorInfo CmaCopy(CmaJob& job) {
  const uint64_t need = job.write ? kAccessWrite : kAccessRead;  // a grant allows one of them
  for (const CmaJob::RegionCheck& c : job.checks) {
    if (!job.table || !job.table->Live(c.id, c.base, c.length, need)) {
      return ErrorInfo{code::kRemoteAccess,
                       "pid " + std::to_string(job.pid) + " no longer advertises region " + std::to_string(c.id) +
                           ": nothing copied",
                       0,
                       {}};
    }
  }
  if (job.mapped) return MappedCopy(job);
  const size_t n = job.local.size();
  size_t i = 0;
  while (i < n) {
    const size_t batch = std::min<size_t>(n - i, IOV_MAX);
    const ssize_t got = job.write ? process_vm_writev(job.pid, &job.local[i], batch, &job.remote[i], batch, 0)
                                  : process_vm_readv(job.pid, &job.local[i], batch, &job.remote[i], batch, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return CmaError(job, errno);
    }
    if (got == 0) return CmaError(job, EFAULT);
    // A partial copy stops anywhere: consume whole pairs, then shorten the pair it stopped in.
    size_t left = static_cast<size_t>(got);
    while (left > 0) {
      iovec& l = job.local[i];
      iovec& r = job.remote[i];
      if (left >= l.iov_len) {
        left -= l.iov_len;
        ++i;
      } else {
        l.iov_base = static_cast<char*>(l.iov_base) + left;
        r.iov_base = static_cast<char*>(r.iov_base) + left;
        l.iov_len -= left;
        r.iov_len -= left;
        left = 0;
      }
    }
  }
  return {};
}

std::vector<CmaJob> SplitCmaJob(CmaJob job, size_t parts, size_t min_bytes) {
  size_t total = 0;
  for (const iovec& v : job.local) total += v.iov_len;
  parts = std::max<size_t>(1, std::min(parts, total / std::max<size_t>(min_bytes, 1)));
  if (parts == 1) {
    std::vector<CmaJob> one;
    one.push_back(std::move(job));
    return one;
  }
  const size_t share = (total + parts - 1) / parts;
  std::vector<CmaJob> out(parts);
  size_t part = 0, filled = 0;
  for (size_t i = 0; i < job.local.size(); ++i) {
    char* l = static_cast<char*>(job.local[i].iov_base);
    char* r = static_cast<char*>(job.remote[i].iov_base);
    size_t left = job.local[i].iov_len;
    while (left > 0) {
      const size_t take = std::min(left, share - filled);
      out[part].local.push_back({l, take});
      out[part].remote.push_back({r, take});
      l += take;
      r += take;
      left -= take;
      filled += take;
      if (filled == share && part + 1 < parts) {
        ++part;
        filled = 0;
      }
    }
  }
  out.resize(part + 1);
  for (CmaJob& j : out) {
    j.transfer = job.transfer;
    j.pid = job.pid;
    j.write = job.write;
    j.mapped = job.mapped;
    j.keep = job.keep;
    j.watch = job.watch;
    j.table = job.table;
    j.checks = job.checks;
  }
  return out;
}

std::string CmaProbe(pid_t pid, uint64_t address, size_t length) {
  std::vector<char> buffer(length);
  iovec local{buffer.data(), length};
  iovec remote{reinterpret_cast<void*>(static_cast<uintptr_t>(address)), length};
  if (process_vm_readv(pid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(length)) return {};
  return std::string("process_vm_readv: ") + std::strerror(errno);
}

void CmaCopier::Submit(CmaJob job) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) {
    ErrorInfo closed{code::kClosed, "agent closed before the copy started", 0, {}};
    done_(job.transfer, &closed);
    return;
  }
  while (workers_.size() < threads_) workers_.emplace_back([this] { Run(); });
  queue_.push_back(std::move(job));
  cv_.notify_one();
}

void CmaCopier::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& w : workers_) w.join();
  workers_.clear();
}

void CmaCopier::Run() {
  for (;;) {
    CmaJob job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      job = std::move(queue_.front());
      queue_.pop_front();
      if (stop_) {
        ErrorInfo closed{code::kClosed, "agent closed before the copy started", 0, {}};
        lock.unlock();
        done_(job.transfer, &closed);
        continue;
      }
    }
    ErrorInfo result = CmaCopy(job);
    done_(job.transfer, result.ok() ? nullptr : &result);
  }
}

}  // namespace kvf
