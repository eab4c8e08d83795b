// GGUF's scalar value types (size, decoding) and the accessors of parsed metadata values and tensors.
#include <cstring>
#include <limits>
#include <string>

#include "engine/gguf.h"
#include "engine/gguf_internal.h"

namespace kvf::engine {
namespace gguf_internal {

// Size in bytes of a fixed-size GGUF value type, 0 for STRING, ARRAY and unknown types.
size_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::BOOL:
      return 1;
    case GgufType::UINT16:
    case GgufType::INT16:
      return 2;
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::FLOAT32:
      return 4;
    case GgufType::UINT64:
    case GgufType::INT64:
    case GgufType::FLOAT64:
      return 8;
    case GgufType::STRING:
    case GgufType::ARRAY:
      return 0;
  }
  return 0;
}

bool KnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::FLOAT64); }

// Decodes one fixed-size little-endian scalar at p into (bits, signed value, double value).
void DecodeScalar(GgufType t, const uint8_t* p, uint64_t* u, int64_t* i, double* f) {
  switch (t) {
    case GgufType::UINT8:
      *u = p[0];
      *i = static_cast<int64_t>(*u);
      *f = static_cast<double>(*u);
      return;
    case GgufType::BOOL:
      *u = p[0];
      *i = p[0];
      *f = p[0];
      return;
    case GgufType::INT8: {
      int8_t v;
      std::memcpy(&v, p, 1);
      *i = v;
      break;
    }
    case GgufType::UINT16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      *u = v;
      *i = v;
      *f = v;
      return;
    }
    case GgufType::INT16: {
      int16_t v;
      std::memcpy(&v, p, 2);
      *i = v;
      break;
    }
    case GgufType::UINT32: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      *u = v;
      *i = v;
      *f = v;
      return;
    }
    case GgufType::INT32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      *i = v;
      break;
    }
    case GgufType::UINT64: {
      std::memcpy(u, p, 8);
      *i = static_cast<int64_t>(*u);  // meaningful only when it fits; callers check
      *f = static_cast<double>(*u);
      return;
    }
    case GgufType::INT64:
      std::memcpy(i, p, 8);
      break;
    case GgufType::FLOAT32: {
      float v;
      std::memcpy(&v, p, 4);
      *f = v;
      *u = 0;
      *i = 0;
      return;
    }
    case GgufType::FLOAT64:
      std::memcpy(f, p, 8);
      *u = 0;
      *i = 0;
      return;
    default:
      return;
  }
  // Signed integer types fall through to here.
  *u = static_cast<uint64_t>(*i);
  *f = static_cast<double>(*i);
}

}  // namespace gguf_internal

namespace {

using gguf_internal::Bad;
using gguf_internal::DecodeScalar;
using gguf_internal::ScalarSize;

bool IsInteger(GgufType t) {
  switch (t) {
    case GgufType::UINT8:
    case GgufType::INT8:
    case GgufType::UINT16:
    case GgufType::INT16:
    case GgufType::UINT32:
    case GgufType::INT32:
    case GgufType::UINT64:
    case GgufType::INT64:
      return true;
    default:
      return false;
  }
}

bool IsSigned(GgufType t) {
  return t == GgufType::INT8 || t == GgufType::INT16 || t == GgufType::INT32 || t == GgufType::INT64;
}

}  // namespace

const char* GgufTypeName(GgufType t) {
  static const char* const kNames[] = {"uint8", "int8",   "uint16", "int16",  "uint32", "int32",  "float32",
                                       "bool",  "string", "array",  "uint64", "int64",  "float64"};
  auto i = static_cast<uint32_t>(t);
  return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "unknown";
}

// ---------------------------------------------------------------------------------------------------------
// GgufValue

std::string GgufValue::Describe() const {
  std::string s = std::string(key_) + " (";
  if (is_array())
    s += std::string("array of ") + GgufTypeName(array_type_);
  else
    s += GgufTypeName(type_);
  return s + ")";
}

uint64_t GgufValue::AsUInt() const {
  if (!IsInteger(type_)) Bad("metadata " + Describe() + " is not an integer");
  if (IsSigned(type_) && i_ < 0) Bad("metadata " + Describe() + " is negative");
  return u_;
}

int64_t GgufValue::AsInt() const {
  if (!IsInteger(type_)) Bad("metadata " + Describe() + " is not an integer");
  if (type_ == GgufType::UINT64 && u_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    Bad("metadata " + Describe() + " does not fit int64");
  return i_;
}

double GgufValue::AsFloat() const {
  if (type_ != GgufType::FLOAT32 && type_ != GgufType::FLOAT64 && !IsInteger(type_))
    Bad("metadata " + Describe() + " is not a number");
  return f_;
}

bool GgufValue::AsBool() const {
  if (type_ != GgufType::BOOL) Bad("metadata " + Describe() + " is not a bool");
  return u_ != 0;
}

std::string_view GgufValue::AsString() const {
  if (type_ != GgufType::STRING) Bad("metadata " + Describe() + " is not a string");
  return str_;
}

const std::vector<std::string_view>& GgufValue::Strings() const {
  if (!is_array() || array_type_ != GgufType::STRING) Bad("metadata " + Describe() + " is not an array of strings");
  return strings_;
}

int64_t GgufValue::IntAt(uint64_t i) const {
  if (!is_array() || (!IsInteger(array_type_) && array_type_ != GgufType::BOOL))
    Bad("metadata " + Describe() + " is not an array of integers");
  if (i >= count_) throw Error(code::kInvalidArgument, "index " + std::to_string(i) + " past " + Describe());
  uint64_t u = 0;
  int64_t v = 0;
  double f = 0;
  DecodeScalar(array_type_, raw_ + i * ScalarSize(array_type_), &u, &v, &f);
  if (array_type_ == GgufType::UINT64 && u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    Bad("metadata " + Describe() + " element " + std::to_string(i) + " does not fit int64");
  return v;
}

double GgufValue::FloatAt(uint64_t i) const {
  if (!is_array() || (!IsInteger(array_type_) && array_type_ != GgufType::FLOAT32 && array_type_ != GgufType::FLOAT64))
    Bad("metadata " + Describe() + " is not an array of numbers");
  if (i >= count_) throw Error(code::kInvalidArgument, "index " + std::to_string(i) + " past " + Describe());
  uint64_t u = 0;
  int64_t v = 0;
  double f = 0;
  DecodeScalar(array_type_, raw_ + i * ScalarSize(array_type_), &u, &v, &f);
  return f;
}

std::vector<int64_t> GgufValue::Ints() const {
  if (!is_array()) Bad("metadata " + Describe() + " is not an array");
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(count_));  // count_ elements are present in the file
  for (uint64_t i = 0; i < count_; ++i) out.push_back(IntAt(i));
  return out;
}

std::vector<float> GgufValue::Floats() const {
  if (!is_array()) Bad("metadata " + Describe() + " is not an array");
  std::vector<float> out;
  out.reserve(static_cast<size_t>(count_));
  for (uint64_t i = 0; i < count_; ++i) out.push_back(static_cast<float>(FloatAt(i)));
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// GgufTensor

const uint8_t* GgufTensor::row(uint64_t r) const {
  if (r >= rows())
    throw Error(code::kInvalidArgument, "row " + std::to_string(r) + " out of range for tensor " + std::string(name) +
                                            " with " + std::to_string(rows()) + " rows");
  return data + r * row_bytes();
}

std::string GgufTensor::ShapeString() const {
  std::string s = "[";
  for (uint32_t d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
  return s + "]";
}

}  // namespace kvf::engine
