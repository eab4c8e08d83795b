// memcpy_bench: single-thread memcpy bandwidth between two buffers larger than the CPU caches: the
// physical limit for a same-host, host-memory transfer (kvfabric's target: >= 60% of this).
//
//   memcpy_bench [--size BYTES (256 MiB)] [--block BYTES (= size)] [--duration S (2)]
// One JSON line on stdout, a human line on stderr. GB/s are decimal (bytes copied / ns).
#define _GNU_SOURCE
#include <getopt.h>

#include "pool_alloc.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  size_t size = 256u << 20, block = 0;
  double duration = 2.0;
  static struct option lo[] = {{"size", required_argument, 0, 's'}, {"block", required_argument, 0, 'b'},
                               {"duration", required_argument, 0, 't'}, {0, 0, 0, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
    if (c == 's') size = strtoull(optarg, NULL, 0);
    else if (c == 'b') block = strtoull(optarg, NULL, 0);
    else if (c == 't') duration = atof(optarg);
    else {
      fprintf(stderr, "usage: memcpy_bench [--size BYTES] [--block BYTES] [--duration S]\n");
      return 2;
    }
  }
  if (block == 0 || block > size) block = size;
  uint8_t *src = alloc_pool(size), *dst = alloc_pool(size);
  if (!src || !dst) return 1;
  memset(src, 0x5a, size);
  memset(dst, 0, size);  // fault every page in before timing
  memcpy(dst, src, size);
  uint64_t bytes = 0, passes = 0, best_pass = UINT64_MAX;
  const uint64_t t0 = now_ns(), end = t0 + (uint64_t)(duration * 1e9);
  do {
    uint64_t p0 = now_ns();
    for (size_t off = 0; off < size; off += block) memcpy(dst + off, src + off, block < size - off ? block : size - off);
    uint64_t p = now_ns() - p0;
    if (p < best_pass) best_pass = p;
    bytes += size;
    ++passes;
  } while (now_ns() < end);
  const uint64_t elapsed = now_ns() - t0;
  if (memcmp(dst, src, size) != 0) return 1;
  printf("{\"tool\":\"memcpy_bench\",\"size\":%zu,\"block\":%zu,\"passes\":%llu,\"seconds\":%.6f,\"gbps\":%.4f,\"bestPassGbps\":%.4f}\n",
         size, block, (unsigned long long)passes, elapsed / 1e9, (double)bytes / elapsed, (double)size / best_pass);
  fprintf(stderr, "memcpy %zu MiB, block %zu: %.2f GB/s mean, %.2f GB/s best pass (%llu passes)\n", size >> 20, block,
          (double)bytes / elapsed, (double)size / best_pass, (unsigned long long)passes);
  free(src);
  free(dst);
  return 0;
}
