// The peers' buffers are the same kind of memory kvfabric's agent.allocate() gives without reserved
// hugepages (native/core/host_memory.cc): 2 MiB-aligned and madvise(MADV_HUGEPAGE), so that transparent
// hugepages back them where THP is in "madvise" or "always" mode. Comparing kvfabric on huge pages with a
// peer on 4 KiB pages would flatter kvfabric (cross-memory attach pins every page it copies).
#pragma once
#include <stdlib.h>
#include <sys/mman.h>

static inline void *alloc_pool(size_t size) {
  const size_t huge = 2u << 20;
  size_t rounded = (size + huge - 1) / huge * huge;
  void *p = aligned_alloc(huge, rounded);
  if (p) madvise(p, rounded, MADV_HUGEPAGE);  // advisory
  return p;
}
