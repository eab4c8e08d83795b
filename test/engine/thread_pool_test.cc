// ThreadPool: every index runs exactly once per loop, back-to-back loops (workers still spinning) and
// loops after a pause (workers asleep) both work, and a chunk's exception reaches the caller.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "engine/thread_pool.h"

namespace kvf::engine {
namespace {

TEST(ThreadPool, EveryIndexOnceSpinningAndSleeping) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(1000);
    for (int round = 0; round < 300; ++round) {
      const int64_t n = 1 + (round * 37) % 1000;
      if (round % 50 == 49) std::this_thread::sleep_for(ThreadPool::kSpin * 4);  // let the workers sleep
      pool.ParallelFor(n, [&](int64_t begin, int64_t end, int thread) {
        ASSERT_GE(thread, 0);
        ASSERT_LT(thread, threads);
        for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
      });
      for (int64_t i = 0; i < 1000; ++i) {
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), i < n ? 1 : 0) << threads << " threads, round " << round;
        hits[static_cast<size_t>(i)].store(0);
      }
    }
  }
}

TEST(ThreadPool, ExceptionFromAWorkerChunkReachesTheCaller) {
  ThreadPool pool(2);
  for (int round = 0; round < 20; ++round) {
    EXPECT_THROW(pool.ParallelFor(10, [](int64_t begin, int64_t, int) {
      if (begin > 0) throw std::runtime_error("worker chunk");
    }), std::runtime_error);
    EXPECT_THROW(pool.ParallelFor(10, [](int64_t begin, int64_t, int) {
      if (begin == 0) throw std::runtime_error("caller chunk");
    }), std::runtime_error);
    int64_t covered = 0;
    std::mutex mu;
    pool.ParallelFor(10, [&](int64_t begin, int64_t end, int) {
      std::lock_guard<std::mutex> lock(mu);
      covered += end - begin;
    });
    EXPECT_EQ(covered, 10);
  }
}

}  // namespace
}  // namespace kvf::engine
