// A small fixed pool of worker threads for the engine's data-parallel loops (matmul rows, attention
// heads). Persistent threads rather than one std::thread per loop: a decode step runs ~10 loops per
// layer, and spawning threads for each would cost more than the work on small models.
#pragma once

#include <condition_variable>
#include <cstdint>
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

 private:
  void Worker(int index);

  int size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  std::exception_ptr error_;
};

}  // namespace kvf::engine
