// Row dequantization and row·vector dot products for the ggml types the engine reads: F32, F16, BF16,
// Q8_0, Q4_0, Q4_1, Q4_K, Q6_K. Block layouts are ggml's (ggml-common.h); dequantized values are
// bit-identical to ggml's reference dequantize_row_* (and to gguf-py's gguf.quants.dequantize).
//
// The raw-pointer functions trust `src` to hold the n elements (the GGUF loader has already checked
// that every tensor's bytes lie in the file); `n` must be a multiple of the type's block size.
// Errors: KVF_ERR_UNSUPPORTED_TENSOR_TYPE for another type, KVF_ERR_INVALID_ARGUMENT for a bad n or row.
#pragma once

#include <cstdint>

#include "engine/ggml_type.h"
#include "engine/gguf.h"

namespace kvf::engine {

float Fp16ToFp32(uint16_t h);
float Bf16ToFp32(uint16_t h);
// Round-to-nearest-even, as ggml's GGML_FP32_TO_FP16 (for tests and writers).
uint16_t Fp32ToFp16(float f);

bool CanDequantize(GgmlType type);

// dst[0..n) = dequantized elements [0, n) of the data at src.
void DequantizeRow(GgmlType type, const void* src, float* dst, int64_t n);

// sum_i dequant(src)[i] * x[i] over n elements, without materialising the row. The sum is taken in a
// fixed order (16 interleaved float accumulators), so it is deterministic but rounds differently from a
// sequential sum.
float DotRow(GgmlType type, const void* src, const float* x, int64_t n);

// Tensor-level forms: row r of a 2D-or-more tensor (r < t.rows()), row_length() elements.
void DequantizeRow(const GgufTensor& t, uint64_t r, float* dst);
float DotRow(const GgufTensor& t, uint64_t r, const float* x);

}  // namespace kvf::engine
