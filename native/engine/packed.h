// Weight matrices of the 32-element block types (Q8_0, Q4_0, Q4_1), repacked once at load into panels of 16
// rows, so that one 512-bit register holds the same 4 elements of 16 rows: a dot product then runs for 16 rows
// at once with no horizontal sums (AVX-512 VNNI dpbusd against a broadcast activation dword), and a block of a
// panel is already the B operand of an AMX tile product. The panel is as large as the 16 rows it replaces.
//
// Arithmetic (fixed, so every ISA gives the same bits; the unit test checks it). For weight row r, token t:
//   S[b]  = sum_{e < 32} w[e] * q[e]                      (int32, exact; w the block's integer values)
//   acc   = acc + (d_w[b] * d_x[b]) * float(S[b])         (no FMA), blocks in order
//   summ  = summ + m_w[b] * s_x[b]                        (Q4_1 only)
//   y     = acc + summ (Q4_1) or acc
// A (row, token) result depends only on that row and that token: not on tiling, batch size or threads.
// Other quantized types keep the lane-wise products of qdot.h.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/ggml_type.h"
#include "engine/qdot.h"

namespace kvf::engine {

constexpr int kPanelRows = 16;

enum class PackedKind : uint8_t { kQ8_0, kQ4_0, kQ4_1 };

// One block of one panel: the 32 elements of 16 rows, then 16 fp16 scales (and 16 fp16 mins for Q4_1).
// Q8_0: group j (elements 4j..4j+3) of row r at byte 64 * j + 4 * r, as int8.
// Q4_x: chunk c (bytes 4c..4c+3 of ggml's qs) of row r at byte 64 * c + 4 * r: low nibbles are elements
//       4c..4c+3, high nibbles elements 16+4c..16+4c+3 (ggml's order), values 0..15 (Q4_0 subtracts 8).
struct PackedLayout {
  int64_t quants, scales, mins, bytes;  // offsets in the block, and its size
};
constexpr PackedLayout kPackedLayouts[] = {
    {0, 512, 512, 544},  // Q8_0
    {0, 256, 256, 288},  // Q4_0
    {0, 256, 288, 320},  // Q4_1
};
constexpr const PackedLayout& LayoutOf(PackedKind k) { return kPackedLayouts[static_cast<int>(k)]; }
static_assert(kPackedLayouts[0].bytes == kPanelRows * 34, "a Q8_0 panel block is as large as its 16 rows");
static_assert(kPackedLayouts[1].bytes == kPanelRows * 18, "a Q4_0 panel block is as large as its 16 rows");
static_assert(kPackedLayouts[2].bytes == kPanelRows * 20, "a Q4_1 panel block is as large as its 16 rows");

// The integer zero point the kernels take off unsigned weights: S = sum(u * q) - offset * sum(q).
constexpr int32_t kNibbleZero[] = {0, 8, 0};

struct PackedMatrix {
  PackedKind kind = PackedKind::kQ4_1;
  int64_t rows = 0, n_blocks = 0, n_panels = 0;
  std::vector<uint8_t> data;  // panel g, block b at (g * n_blocks + b) * LayoutOf(kind).bytes

  const uint8_t* Panel(int64_t g) const {
    return data.data() + static_cast<size_t>(g * n_blocks * LayoutOf(kind).bytes);
  }
};

bool Packable(GgmlType type);

// rows rows of k elements of `type` (Packable), row r at data + r * row_bytes. Rows past the last of the last
// panel are zero (scale 0), and their results are never written.
PackedMatrix PackMatrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t k, uint64_t row_bytes);

// Per-thread scratch of PackedDots (the AMX kernel's unpacked tiles).
struct PackedScratch {
  std::vector<uint8_t> tiles;
};

// y[t * y_stride + r] = row r of w . token t of x, for rows of panels [panel_begin, panel_end) and every token.
void PackedDots(const PackedMatrix& w, int64_t panel_begin, int64_t panel_end, const QuantizedActivations& x, float* y,
                int64_t y_stride, QdotIsa isa, PackedScratch& scratch);

}  // namespace kvf::engine
