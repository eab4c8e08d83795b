// The per-ISA kernels behind PackedDots (packed.h), one panel per call, on raw pointers. Like qdot_kernels.h,
// the SIMD ones live in files compiled for their target and keep everything else internal.
#pragma once

#include <cstdint>

#include "engine/packed.h"

#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace kvf::engine {

constexpr int64_t kAmxScratchPerBlock = 1664;

struct PackedView {
  PackedKind kind;
  int64_t n_blocks;
  const uint8_t* panel;  // block 0 of the panel; block b at panel + b * LayoutOf(kind).bytes
  int rows;              // rows of the panel that exist (1..kPanelRows)
  int64_t n_tokens;
  const int8_t* xq;     // [token][block][32]
  const float* xd;      // [token][block]
  const float* xs;      // [token][block]
  const int32_t* xsum;  // [token][block]: sum of the block's q
  float* y;             // y[t * y_stride + r]
  int64_t y_stride;
  uint8_t* tiles;  // AMX only: n_blocks * kAmxScratchPerBlock bytes, 64-byte aligned
};

// A matrix product with few activation rows (decode) streams every panel from memory once; the kernels ask for
// the block this far ahead of the one they work on (static: each target's file keeps its own copy).
constexpr int64_t kPrefetchBlocks = 8;
static inline void PrefetchBlock(const uint8_t* blk, int64_t bytes) {
#if defined(__x86_64__)
  for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(blk + o), _MM_HINT_T0);
#else
  (void)blk, (void)bytes;
#endif
}

void PackedPanelScalar(const PackedView& v);
void PackedPanelAvx2(const PackedView& v);
void PackedPanelAvx512Vnni(const PackedView& v);
// PackedDots hands fewer activation rows than this to the VNNI kernel.
constexpr int64_t kAmxMinTokens = 32;
// Tokens in groups of 16 on AMX tiles, the rest through PackedPanelAvx512Vnni. False if the OS refused AMX.
bool AmxUsable();
void PackedPanelAmx(const PackedView& v);

}  // namespace kvf::engine
