// ggml tensor types as GGUF stores them: the numeric ids and block geometry follow ggml (ggml.h,
// ggml-common.h). The loader needs the geometry of every type it may meet, to bounds-check tensor data
// even for types it cannot dequantize; `dequantizable` marks the ones native/engine/dequant.cc handles.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvf::engine {

enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// Elements per block.
constexpr int64_t QK4_0 = 32;
constexpr int64_t QK4_1 = 32;
constexpr int64_t QK8_0 = 32;
constexpr int64_t QK_K = 256;
constexpr int64_t K_SCALE_SIZE = 12;

struct GgmlTypeTraits {
  const char* name;    // nullptr: the id is not a ggml type this loader knows
  int64_t block_size;  // elements per block
  int64_t type_size;   // bytes per block
  bool dequantizable;
};

// The traits of `id`; name == nullptr for ids the loader does not know (including ggml's IQ* and TQ*
// types, whose geometry we do not need yet).
constexpr GgmlTypeTraits TypeTraits(uint32_t id) {
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::F32:
      return {"F32", 1, 4, true};
    case GgmlType::F16:
      return {"F16", 1, 2, true};
    case GgmlType::Q4_0:
      return {"Q4_0", QK4_0, 2 + QK4_0 / 2, true};
    case GgmlType::Q4_1:
      return {"Q4_1", QK4_1, 4 + QK4_1 / 2, true};
    case GgmlType::Q5_0:
      return {"Q5_0", 32, 2 + 4 + 16, false};
    case GgmlType::Q5_1:
      return {"Q5_1", 32, 4 + 4 + 16, false};
    case GgmlType::Q8_0:
      return {"Q8_0", QK8_0, 2 + QK8_0, true};
    case GgmlType::Q8_1:
      return {"Q8_1", 32, 4 + 32, false};
    case GgmlType::Q2_K:
      return {"Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 4, false};
    case GgmlType::Q3_K:
      return {"Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2, false};
    case GgmlType::Q4_K:
      return {"Q4_K", QK_K, 4 + K_SCALE_SIZE + QK_K / 2, true};
    case GgmlType::Q5_K:
      return {"Q5_K", QK_K, 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, false};
    case GgmlType::Q6_K:
      return {"Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, true};
    case GgmlType::Q8_K:
      return {"Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2, false};
    case GgmlType::I8:
      return {"I8", 1, 1, false};
    case GgmlType::I16:
      return {"I16", 1, 2, false};
    case GgmlType::I32:
      return {"I32", 1, 4, false};
    case GgmlType::I64:
      return {"I64", 1, 8, false};
    case GgmlType::F64:
      return {"F64", 1, 8, false};
    case GgmlType::BF16:
      return {"BF16", 1, 2, true};
  }
  return {nullptr, 0, 0, false};
}

constexpr GgmlTypeTraits TypeTraits(GgmlType t) { return TypeTraits(static_cast<uint32_t>(t)); }

inline const char* TypeName(GgmlType t) {
  const char* n = TypeTraits(t).name;
  return n ? n : "unknown";
}

}  // namespace kvf::engine
