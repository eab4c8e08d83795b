// Quantized matrix-vector products, as ggml computes them: the activations are quantized once per token
// to 8 bits in blocks of 32 (ggml's block_q8_1: d rounded through fp16, q = round(x / d), s = d * sum(q)),
// weight rows are unpacked to int8 blocks of 32 with float scales, and each block's products are summed
// exactly in integers (AVX2 maddubs, AVX-512 VNNI dpbusd, or plain C) before one float multiply-add.
// This replaces "dequantize the row to float, then a float dot", which spent half its time dequantizing.
//
// The arithmetic is fixed, so every ISA gives the same bits (the unit test checks it). For weight block b
// (scale vector sc[8], optional min m) and token block b (d, s, q[32]):
//   L[l]   = sum_{j = 4l .. 4l+3} w[j] * q[j]                  (int32, exact; l = 0..7)
//   acc[l] = acc[l] + (sc[l] * d) * float(L[l])               (no FMA)
//   summ   = summ + m * s                                     (types with a min: Q4_1, Q4_K)
// and the result is ((acc0+acc4) + (acc2+acc6)) + ((acc1+acc5) + (acc3+acc7)) + summ.
// Each (row, token) result depends only on that row and that token, so it is the same whatever the
// tiling, the batch size or the thread count.
//
// Types: Q8_0, Q4_0 and Q4_1 match ggml's q8_0/q4_0 x q8_0 and q4_1 x q8_1 dots up to the order of the
// float sums. Q4_K and Q6_K use the same 32-element activation blocks (ggml uses 256-element Q8_K blocks
// with a float scale): Q4_K as 8 sub-blocks of Q4_1 shape (min = -dmin * m), Q6_K with its two
// per-16-element scales in lanes 0-3 and 4-7.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/ggml_type.h"

namespace kvf::engine {

constexpr int64_t kQBlock = 32;  // elements per quantized block (activations and unpacked weights)
constexpr int kQTileRows = 4;    // weight rows unpacked and dotted together

// kAvx2 means AVX2 + F16C; kAvx512Vnni means AVX-512 F/BW/VL/VNNI besides; kAmx means AMX-INT8 tiles besides,
// with the kernel's permission to use them (packed.h; elsewhere it counts as kAvx512Vnni).
enum class QdotIsa { kScalar, kAvx2, kAvx512Vnni, kAmx };

// The best kernel this CPU runs (checked once, at the first call; $KVF_ENGINE_ISA=scalar, avx2 or avx512vnni
// caps it).
QdotIsa BestQdotIsa();
bool QdotIsaSupported(QdotIsa isa);
const char* QdotIsaName(QdotIsa isa);

// True for the weight types the quantized dot handles (the rest go through DequantizeRow + float dots).
bool HasQuantizedDot(GgmlType type);

// n_tokens activation rows of k elements (k a multiple of kQBlock), quantized per block of 32.
struct QuantizedActivations {
  int64_t n_tokens = 0, n_blocks = 0;  // n_blocks per token
  std::vector<int8_t> q;               // [token][block][32], in [-127, 127]
  std::vector<float> d, s;             // [token][block]
  std::vector<int32_t> sum;            // [token][block]: sum of the block's q

  // Quantizes tokens [begin, end) of x (already sized by Resize). isa picks the code; the result is the same.
  void Resize(int64_t n_tokens, int64_t k);
  void Quantize(const float* x, int64_t begin, int64_t end, QdotIsa isa = BestQdotIsa());
};

// Up to kQTileRows consecutive weight rows, unpacked: int8 values per block of 32 (Q4_1 / Q4_K: the
// nibble 0..15, with a min; others: the signed value), a scale per lane group and a min per block.
struct UnpackedRows {
  int rows = 0;
  int64_t n_blocks = 0;  // per row
  bool with_min = false;
  std::vector<int8_t> q;     // [row][block][32]
  std::vector<float> scale;  // [row][block][8]: lanes 0-3 scale elements 0-15, lanes 4-7 elements 16-31
  std::vector<float> min;    // [row][block]

  // Rows of `type` (HasQuantizedDot) with k elements each, row r at first + r * row_bytes. isa picks the
  // code (SIMD for Q8_0, Q4_0, Q4_1); the result is the same.
  void Unpack(GgmlType type, const uint8_t* first, uint64_t row_bytes, int rows, int64_t k,
              QdotIsa isa = BestQdotIsa());
};

// y[t * y_stride + r] = row r of w . token t of x, for every row of w and every token of x. x and w
// must have the same n_blocks; isa must be supported (QdotIsaSupported).
void QuantizedTileDots(const UnpackedRows& w, const QuantizedActivations& x, float* y, int64_t y_stride, QdotIsa isa);

}  // namespace kvf::engine
