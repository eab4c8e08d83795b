// What the GGUF parser (gguf.cc) and the value accessors (gguf_value.cc) share: the error they raise and the
// decoding of GGUF's fixed-size scalar types.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/gguf.h"

// GGUF is little-endian (v3 added big-endian files, which we reject by their byte-swapped version).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace kvf::engine::gguf_internal {

[[noreturn]] inline void Bad(const std::string& message) { throw Error(code::kBadModel, message); }

// Size in bytes of a fixed-size GGUF value type, 0 for STRING, ARRAY and unknown types.
size_t ScalarSize(GgufType t);

bool KnownType(uint32_t t);

// Decodes one fixed-size little-endian scalar at p into (bits, signed value, double value).
void DecodeScalar(GgufType t, const uint8_t* p, uint64_t* u, int64_t* i, double* f);

}  // namespace kvf::engine::gguf_internal
