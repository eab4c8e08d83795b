#include "engine/thread_pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kvf::engine {
namespace {

inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or kSpin has passed; true if done() became true. Yields between rounds, so that on
// an oversubscribed core the thread being waited for can run.
template <class Pred>
bool SpinUntil(Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + ThreadPool::kSpin;
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      if (done()) return true;
      CpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
    std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  size_ = threads > 0 ? threads : 1;
  workers_.reserve(static_cast<size_t>(size_ - 1));
  for (int i = 1; i < size_; ++i) workers_.emplace_back([this, i] { Worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ParallelFor(int64_t n, const Fn& fn) {
  if (n <= 0) return;
  // Small loops are not worth a wake-up.
  if (size_ == 1 || n == 1) {
    fn(0, n, 0);
    return;
  }
  fn_ = &fn;
  n_ = n;
  error_ = nullptr;  // no worker is running: the previous loop's all finished
  pending_.store(size_ - 1, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    // Taking the lock orders the increment before any sleeping worker's predicate check, so none misses it.
    std::lock_guard<std::mutex> lock(mu_);
  }
  start_cv_.notify_all();
  std::exception_ptr mine;
  try {
    const int64_t end = n / size_ + (0 < n % size_ ? 1 : 0);
    if (end > 0) fn(0, end, 0);
  } catch (...) {
    mine = std::current_exception();
  }
  auto all_done = [this] { return pending_.load(std::memory_order_acquire) == 0; };
  if (!SpinUntil(all_done)) {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, all_done);
  }
  fn_ = nullptr;
  if (mine) std::rethrow_exception(mine);
  std::lock_guard<std::mutex> lock(mu_);
  if (error_) std::rethrow_exception(error_);
}

void ThreadPool::Worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    auto ready = [&] {
      return stop_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen;
    };
    if (!SpinUntil(ready)) {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, ready);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    const Fn* fn = fn_;
    const int64_t n = n_;
    // Chunk `index` of size_: the first n % size_ chunks get one extra element.
    const int64_t base = n / size_, extra = n % size_;
    const int64_t begin = index * base + (index < extra ? index : extra);
    const int64_t end = begin + base + (index < extra ? 1 : 0);
    if (begin < end) {
      try {
        (*fn)(begin, end, index);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mu_);  // pairs with the caller's predicate check under mu_
      done_cv_.notify_one();
    }
  }
}

}  // namespace kvf::engine
