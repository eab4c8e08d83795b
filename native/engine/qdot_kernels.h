// The per-ISA kernels behind QuantizedTileDots (qdot.h), on raw pointers: the SIMD ones live in files
// compiled for their target with a pragma, and must not instantiate library templates there (an inline
// function compiled for AVX2 could be picked by the linker for every caller).
#pragma once

#include <cstdint>

namespace kvf::engine {

struct QTileView {
  int rows;            // 1..kQTileRows
  int64_t n_blocks;    // per row and per token
  bool with_min;
  const int8_t* wq;    // [row][block][32]
  const float* wscale; // [row][block][8]
  const float* wmin;   // [row][block]; only with_min
  int64_t n_tokens;
  const int8_t* xq;    // [token][block][32]
  const float* xd;     // [token][block]
  const float* xs;     // [token][block]
  float* y;            // y[t * y_stride + r]
  int64_t y_stride;
};

void QTileScalar(const QTileView& v);
void QTileAvx2(const QTileView& v);
void QTileAvx512Vnni(const QTileView& v);

}  // namespace kvf::engine
