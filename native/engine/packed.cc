// Packing, the plain-C kernel and the ISA dispatch of packed.h. Built with -ffp-contract=off (CMakeLists.txt)
// like the SIMD kernels, so all give the same bits.
#include "engine/packed.h"

#include <cstring>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/half.h"
#include "engine/packed_kernels.h"

namespace kvf::engine {
namespace {

struct SourceFormat {
  PackedKind kind;
  int64_t bytes;       // per 32-element ggml block
  int64_t scale, min;  // byte offsets of the fp16 scale and min in the ggml block (min < 0: none)
  int64_t quants;      // byte offset of the quants
};

SourceFormat SourceOf(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
      return {PackedKind::kQ8_0, 34, 0, -1, 2};
    case GgmlType::Q4_0:
      return {PackedKind::kQ4_0, 18, 0, -1, 2};
    case GgmlType::Q4_1:
      return {PackedKind::kQ4_1, 20, 0, 2, 4};
    default:
      throw Error(code::kUnsupportedTensorType, std::string("cannot pack tensor type ") + TypeName(type));
  }
}

// Integer value of element e of row r in a packed block (before the Q4_0 zero point is taken off).
inline int32_t Element(PackedKind kind, const uint8_t* blk, int r, int e) {
  if (kind == PackedKind::kQ8_0) return static_cast<int8_t>(blk[64 * (e / 4) + 4 * r + e % 4]);
  const uint8_t byte = blk[64 * ((e % 16) / 4) + 4 * r + e % 4];
  return e < 16 ? (byte & 0x0F) : (byte >> 4);
}

}  // namespace

bool Packable(GgmlType type) { return type == GgmlType::Q8_0 || type == GgmlType::Q4_0 || type == GgmlType::Q4_1; }

PackedMatrix PackMatrix(GgmlType type, const uint8_t* data, int64_t rows, int64_t k, uint64_t row_bytes) {
  const SourceFormat src = SourceOf(type);
  if (rows < 1 || k < kQBlock || k % kQBlock != 0 || row_bytes < static_cast<uint64_t>(k / kQBlock * src.bytes))
    throw Error(code::kInvalidArgument, "cannot pack " + std::to_string(rows) + " rows of " + std::to_string(k) + " " +
                                            TypeName(type) + " elements");
  PackedMatrix m;
  m.kind = src.kind;
  m.rows = rows;
  m.n_blocks = k / kQBlock;
  m.n_panels = (rows + kPanelRows - 1) / kPanelRows;
  const PackedLayout& L = LayoutOf(m.kind);
  m.data.assign(static_cast<size_t>(m.n_panels * m.n_blocks * L.bytes), 0);
  const int64_t qbytes = m.kind == PackedKind::kQ8_0 ? 32 : 16;
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t g = row / kPanelRows, r = row % kPanelRows;
    for (int64_t b = 0; b < m.n_blocks; ++b) {
      const uint8_t* in = data + row * row_bytes + static_cast<uint64_t>(b * src.bytes);
      uint8_t* blk = m.data.data() + (g * m.n_blocks + b) * L.bytes;
      // 4-byte groups of the quants, each to its place among the panel's 16 rows.
      for (int64_t j = 0; j < qbytes / 4; ++j) std::memcpy(blk + L.quants + 64 * j + 4 * r, in + src.quants + 4 * j, 4);
      std::memcpy(blk + L.scales + 2 * r, in + src.scale, 2);
      if (src.min >= 0) std::memcpy(blk + L.mins + 2 * r, in + src.min, 2);
    }
  }
  return m;
}

void PackedPanelScalar(const PackedView& v) {
  const PackedLayout& L = LayoutOf(v.kind);
  const int32_t zero = kNibbleZero[static_cast<int>(v.kind)];
  const int64_t nb = v.n_blocks;
  for (int64_t t = 0; t < v.n_tokens; ++t) {
    for (int r = 0; r < v.rows; ++r) {
      float acc = 0, summ = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = v.panel + b * L.bytes;
        const int64_t tb = t * nb + b;
        const int8_t* q = v.xq + tb * kQBlock;
        int32_t s = 0;
        for (int e = 0; e < kQBlock; ++e) s += (Element(v.kind, blk, r, e) - zero) * static_cast<int32_t>(q[e]);
        const float d = half::HalfToFloat(half::Load16(blk + L.scales + 2 * r));
        acc = acc + (d * v.xd[tb]) * static_cast<float>(s);
        if (v.kind == PackedKind::kQ4_1) summ = summ + half::HalfToFloat(half::Load16(blk + L.mins + 2 * r)) * v.xs[tb];
      }
      v.y[t * v.y_stride + r] = v.kind == PackedKind::kQ4_1 ? acc + summ : acc;
    }
  }
}

void PackedDots(const PackedMatrix& w, int64_t panel_begin, int64_t panel_end, const QuantizedActivations& x, float* y,
                int64_t y_stride, QdotIsa isa, PackedScratch& scratch) {
  if (w.n_blocks != x.n_blocks)
    throw Error(code::kInvalidArgument, "packed rows of " + std::to_string(w.n_blocks) +
                                            " blocks against activations of " + std::to_string(x.n_blocks));
  if (!QdotIsaSupported(isa)) throw Error(code::kInvalidArgument, std::string("CPU lacks ") + QdotIsaName(isa));
  // Below two token tiles, unpacking a panel for AMX costs more than the VNNI kernel saves (the same bits either way).
  if (isa == QdotIsa::kAmx && x.n_tokens < kAmxMinTokens) isa = QdotIsa::kAvx512Vnni;
  uint8_t* tiles = nullptr;
  if (isa == QdotIsa::kAmx) {
    const size_t need = static_cast<size_t>(w.n_blocks * kAmxScratchPerBlock) + 64;
    if (scratch.tiles.size() < need) scratch.tiles.resize(need);
    tiles = scratch.tiles.data() + (64 - reinterpret_cast<uintptr_t>(scratch.tiles.data()) % 64) % 64;
  }
  void (*kernel)(const PackedView&) = PackedPanelScalar;
  if (isa == QdotIsa::kAmx)
    kernel = PackedPanelAmx;
  else if (isa == QdotIsa::kAvx512Vnni)
    kernel = PackedPanelAvx512Vnni;
  else if (isa == QdotIsa::kAvx2)
    kernel = PackedPanelAvx2;
  for (int64_t g = panel_begin; g < panel_end; ++g) {
    const int rows = static_cast<int>(std::min<int64_t>(kPanelRows, w.rows - g * kPanelRows));
    kernel({w.kind, w.n_blocks, w.Panel(g), rows, x.n_tokens, x.q.data(), x.d.data(), x.s.data(), x.sum.data(),
            y + g * kPanelRows, y_stride, tiles});
  }
}

}  // namespace kvf::engine
