// A small fixed pool of worker threads for the engine's data-parallel loops (matmul rows, attention
// heads). Persistent threads rather than one std::thread per loop: a decode step runs ~10 loops per
// layer, and spawning threads for each would cost more than the work on small models.
//
// Idle workers first spin for a short while (kSpin) watching for the next loop, then sleep on a condition
// variable: a decode step starts loops every few tens of microseconds, and a futex wake-up per loop cost
// more than the loop's work on small models; sleeping after the spin keeps a pool that is not in use (or a
// machine that is oversubscribed) from burning CPU, which is what makes barrier-spinning engines collapse
// when their threads are descheduled.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kvf::engine {

class ThreadPool {
 public:
  // `threads` <= 0: std::thread::hardware_concurrency(). The calling thread counts as one of them.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Splits [0, n) into size() contiguous chunks and runs fn(begin, end, thread_index) on each, the
  // first on the caller; returns when all are done. The first exception thrown by any chunk is
  // rethrown here. Not reentrant: one ParallelFor at a time per pool.
  using Fn = std::function<void(int64_t begin, int64_t end, int thread)>;
  void ParallelFor(int64_t n, const Fn& fn);

  // How long a worker (or the caller, waiting for the workers) spins before it sleeps.
  static constexpr std::chrono::microseconds kSpin{50};

 private:
  void Worker(int index);

  int size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  // Written by ParallelFor before it publishes a loop by incrementing generation_ (release), read by the
  // workers after they see the new generation (acquire).
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::exception_ptr error_;  // guarded by mu_
};

}  // namespace kvf::engine
