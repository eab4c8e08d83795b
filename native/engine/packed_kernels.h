// The per-ISA kernels behind PackedDots (packed.h), one panel per call, on raw pointers. Like qdot_kernels.h,
// the SIMD ones live in files compiled for their target and keep everything else internal.
#pragma once

#include <cstdint>

#include "engine/packed.h"

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

void PackedPanelScalar(const PackedView& v);
void PackedPanelAvx2(const PackedView& v);
void PackedPanelAvx512Vnni(const PackedView& v);
// Tokens in groups of 16 on AMX tiles, the rest through PackedPanelAvx512Vnni. False if the OS refused AMX.
bool AmxUsable();
void PackedPanelAmx(const PackedView& v);

}  // namespace kvf::engine
