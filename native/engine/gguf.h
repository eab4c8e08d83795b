// GGUF (v2 and v3) reader over a read-only mapping of the model file. A model file is untrusted input:
// every count, length, dimension and offset is checked against the bytes actually present before it is
// used, so a truncated, corrupt or hostile file ends in a kvf::Error, never in a crash or a huge
// allocation. Codes: KVF_ERR_BAD_MODEL (unreadable, truncated, corrupt, unsupported version,
// inconsistent sizes, tensor data outside the file) and KVF_ERR_UNSUPPORTED_TENSOR_TYPE.
//
// Metadata strings, string arrays and tensor data are views into the mapping: they live as long as the
// GgufFile. Format reference: ggml/docs/gguf.md and ggml/src/gguf.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/ggml_type.h"

namespace kvf::engine {

enum class GgufType : uint32_t {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
};

const char* GgufTypeName(GgufType t);

// One metadata value. Scalars are decoded; arrays of numbers stay in the file (little-endian, read with
// the accessors below); arrays of strings are decoded to views.
class GgufValue {
 public:
  GgufType type() const { return type_; }
  bool is_array() const { return type_ == GgufType::ARRAY; }

  // Scalars. Each throws KVF_ERR_BAD_MODEL (naming the key) when the value has another type.
  // AsUInt accepts any integer type holding a non-negative value; AsInt any integer type that fits
  // int64; AsFloat float32, float64 or an integer.
  uint64_t AsUInt() const;
  int64_t AsInt() const;
  double AsFloat() const;
  bool AsBool() const;
  std::string_view AsString() const;

  // Arrays. array_type() is the element type; size() the element count. The element accessors throw
  // KVF_ERR_BAD_MODEL when the element type does not fit, like the scalar ones.
  GgufType array_type() const { return array_type_; }
  uint64_t size() const { return is_array() ? count_ : 1; }
  const std::vector<std::string_view>& Strings() const;  // array of STRING
  int64_t IntAt(uint64_t i) const;                       // array of integers (uint64 must fit) or bools
  double FloatAt(uint64_t i) const;                      // array of any numeric type
  std::vector<int64_t> Ints() const;
  std::vector<float> Floats() const;

  // For error messages: "name (type)".
  std::string Describe() const;

 private:
  friend class GgufFile;
  std::string_view key_;
  GgufType type_ = GgufType::UINT8;
  GgufType array_type_ = GgufType::UINT8;
  uint64_t u_ = 0;  // unsigned and bool scalars, and the bit pattern of signed ones
  int64_t i_ = 0;
  double f_ = 0;
  std::string_view str_;
  uint64_t count_ = 0;
  const uint8_t* raw_ = nullptr;  // numeric array elements
  std::vector<std::string_view> strings_;
};

struct GgufTensor {
  std::string_view name;
  uint32_t n_dims = 0;
  uint64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the row length (contiguous), as in ggml
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;  // relative to the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping, n_bytes long

  uint64_t row_length() const { return ne[0]; }
  uint64_t rows() const { return ne[1] * ne[2] * ne[3]; }
  uint64_t row_bytes() const { return n_bytes / rows(); }
  // Bytes of row `r`; throws KVF_ERR_INVALID_ARGUMENT when r >= rows().
  const uint8_t* row(uint64_t r) const;
  std::string ShapeString() const;  // e.g. "[576, 49152]"
};

struct GgufOptions {
  // Reject (KVF_ERR_UNSUPPORTED_TENSOR_TYPE) files holding a tensor that dequant.cc cannot read. Off:
  // such tensors are listed (their size is known) and only fail when dequantized.
  bool require_dequantizable = true;
};

class GgufFile {
 public:
  // Maps and parses the file at `path`.
  static std::unique_ptr<GgufFile> Open(const std::string& path, const GgufOptions& options = {});
  // Parses `size` bytes at `data`, which the caller keeps alive and unchanged for the life of the result.
  static std::unique_ptr<GgufFile> Parse(const uint8_t* data, size_t size, const GgufOptions& options = {});

  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // file offset of the data section
  size_t file_size() const { return size_; }
  const std::string& path() const { return path_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string_view, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* Find(std::string_view key) const;  // nullptr when absent
  // Throws KVF_ERR_BAD_MODEL "missing metadata key ..." when absent.
  const GgufValue& Get(std::string_view key) const;

  // Tensors, in file order.
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* FindTensor(std::string_view name) const;  // nullptr when absent
  const GgufTensor& GetTensor(std::string_view name) const;   // throws KVF_ERR_BAD_MODEL when absent

 private:
  GgufFile() = default;
  void ParseAll(const GgufOptions& options);
  void ParseUnchecked(const GgufOptions& options);

  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  void* mapping_ = nullptr;  // non-null when we own an mmap of size_ bytes
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string_view, GgufValue>> kv_;
  std::unordered_map<std::string_view, size_t> kv_index_;
  std::vector<GgufTensor> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;
};

}  // namespace kvf::engine
