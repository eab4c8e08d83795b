// The per-ISA kernels behind QuantizedTileDots (qdot.h), on raw pointers: the SIMD ones live in files
// compiled for their target with a pragma, and must not instantiate library templates there (an inline
// function compiled for AVX2 could be picked by the linker for every caller).
#pragma once

#include <cstdint>

namespace kvf::engine {

struct QTileView {
  int rows;          // 1..kQTileRows
  int64_t n_blocks;  // per row and per token
  bool with_min;
  const int8_t* wq;     // [row][block][32]
  const float* wscale;  // [row][block][8]
  const float* wmin;    // [row][block]; only with_min
  int64_t n_tokens;
  const int8_t* xq;  // [token][block][32]
  const float* xd;   // [token][block]
  const float* xs;   // [token][block]
  float* y;          // y[t * y_stride + r]
  int64_t y_stride;
};

// Unpacking of the 32-element block types with AVX2 + F16C (the rest are unpacked in plain C): rows x
// n_blocks blocks into q / scale / min as UnpackedRows lays them out. False for another kind.
enum class QUnpackKind { kQ8_0, kQ4_0, kQ4_1, kOther };
bool QUnpackAvx2(QUnpackKind kind, const uint8_t* first, uint64_t row_bytes, int rows, int64_t n_blocks, int8_t* q,
                 float* scale, float* min);

// QuantizedActivations::Quantize's blocks with AVX2 + F16C: n_blocks blocks of 32 floats from x.
void QQuantizeAvx2(const float* x, int64_t n_blocks, int8_t* q, float* d, float* s, int32_t* sum);

void QTileScalar(const QTileView& v);
void QTileAvx2(const QTileView& v);
void QTileAvx512Vnni(const QTileView& v);

}  // namespace kvf::engine
