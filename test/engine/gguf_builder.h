// Writes GGUF bytes in memory for the loader tests, including deliberately broken files: every field is
// emitted as given (counts, lengths, types and offsets are not checked or derived unless asked).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace kvf::engine::testing {

class ByteWriter {
 public:
  std::vector<uint8_t> bytes;

  void U8(uint8_t v) { bytes.push_back(v); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void F32(float v) { Raw(&v, 4); }
  void Str(const std::string& s) {
    U64(s.size());
    Raw(s.data(), s.size());
  }
  void Raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
  }
  void Pad(size_t alignment) {
    while (bytes.size() % alignment) bytes.push_back(0);
  }
};

// A well-formed GGUF with one F32 and one Q8_0 tensor, built from parts the tests can override.
struct GgufBuilder {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  uint64_t alignment = 32;
  bool write_alignment_key = false;

  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;
    std::vector<uint8_t> data;
    bool write_data = true;  // false: only the info is written (for offsets that point outside the file)
  };
  std::vector<Tensor> tensors;
  // Raw metadata entries (key + type + value bytes), appended after general.alignment when present.
  std::vector<std::vector<uint8_t>> kv;
  // When set, written instead of the real counts.
  int64_t tensor_count_override = -1;
  int64_t kv_count_override = -1;

  static std::vector<uint8_t> KvU32(const std::string& key, uint32_t v) {
    ByteWriter w;
    w.Str(key);
    w.U32(4);
    w.U32(v);
    return w.bytes;
  }
  static std::vector<uint8_t> KvString(const std::string& key, const std::string& v) {
    ByteWriter w;
    w.Str(key);
    w.U32(8);
    w.Str(v);
    return w.bytes;
  }

  // Adds a tensor whose offset follows the previous one (aligned); data is filled with a pattern.
  void AddTensor(const std::string& name, std::vector<uint64_t> dims, uint32_t type, size_t n_bytes) {
    uint64_t off = 0;
    if (!tensors.empty()) {
      const Tensor& p = tensors.back();
      off = (p.offset + p.data.size() + alignment - 1) / alignment * alignment;
    }
    std::vector<uint8_t> data(n_bytes);
    for (size_t i = 0; i < n_bytes; ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
    tensors.push_back({name, std::move(dims), type, off, std::move(data), true});
  }

  static GgufBuilder Default() {
    GgufBuilder b;
    b.kv.push_back(KvString("general.architecture", "llama"));
    b.kv.push_back(KvU32("llama.block_count", 1));
    b.AddTensor("norm.weight", {64}, 0, 64 * 4);
    b.AddTensor("w.weight", {64, 2}, 8, 2 * 2 * 34);
    return b;
  }

  std::vector<uint8_t> Build() const {
    ByteWriter w;
    w.U32(magic);
    w.U32(version);
    w.U64(tensor_count_override >= 0 ? static_cast<uint64_t>(tensor_count_override) : tensors.size());
    uint64_t n_kv = kv.size() + (write_alignment_key ? 1 : 0);
    w.U64(kv_count_override >= 0 ? static_cast<uint64_t>(kv_count_override) : n_kv);
    if (write_alignment_key) {
      auto a = KvU32("general.alignment", static_cast<uint32_t>(alignment));
      w.Raw(a.data(), a.size());
    }
    for (const auto& e : kv) w.Raw(e.data(), e.size());
    for (const auto& t : tensors) {
      w.Str(t.name);
      w.U32(static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) w.U64(d);
      w.U32(t.type);
      w.U64(t.offset);
    }
    w.Pad(alignment ? alignment : 1);
    size_t data_start = w.bytes.size();
    for (const auto& t : tensors) {
      if (!t.write_data) continue;
      if (data_start + t.offset + t.data.size() > w.bytes.size()) w.bytes.resize(data_start + t.offset + t.data.size());
      std::memcpy(w.bytes.data() + data_start + t.offset, t.data.data(), t.data.size());
    }
    return w.bytes;
  }
};

}  // namespace kvf::engine::testing
