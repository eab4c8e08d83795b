// The GGUF parser: mapping the file, the header, the metadata and the tensor table (checked against the bytes).
#include "engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/gguf_internal.h"

namespace kvf::engine {
namespace {

using gguf_internal::Bad;
using gguf_internal::DecodeScalar;
using gguf_internal::KnownType;
using gguf_internal::ScalarSize;

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint32_t kMaxDims = 4;         // GGML_MAX_DIMS

// Bounds-checked cursor over the file bytes.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  const uint8_t* Take(uint64_t n, const char* what) {
    if (n > remaining()) {
      std::ostringstream m;
      m << "truncated: " << what << " needs " << n << " bytes at offset " << pos_ << ", the file has " << remaining()
        << " left (size " << size_ << ")";
      Bad(m.str());
    }
    const uint8_t* p = data_ + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  uint32_t U32(const char* what) {
    uint32_t v;
    std::memcpy(&v, Take(4, what), 4);
    return v;
  }
  uint64_t U64(const char* what) {
    uint64_t v;
    std::memcpy(&v, Take(8, what), 8);
    return v;
  }
  std::string_view String(const char* what) {
    uint64_t n = U64(what);
    const uint8_t* p = Take(n, what);
    return {reinterpret_cast<const char*>(p), static_cast<size_t>(n)};
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

std::string Quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s.substr(0, 80)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 80) out += "...";
  return out + "\"";
}

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// GgufFile

GgufFile::~GgufFile() {
  if (mapping_) munmap(mapping_, size_);
}

std::unique_ptr<GgufFile> GgufFile::Open(const std::string& path, const GgufOptions& options) {
  auto sys_error = [&](const char* what) {
    int e = errno;
    return Error(code::kBadModel, std::string("cannot ") + what + " model file " + path + ": " + std::strerror(e));
  };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw sys_error("open");
  struct stat st;
  if (fstat(fd, &st) != 0) {
    Error e = sys_error("stat");
    ::close(fd);
    throw e;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(code::kBadModel, "model path " + path + " is not a regular file");
  }
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* m = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      Error e = sys_error("map");
      ::close(fd);
      throw e;
    }
    f->mapping_ = m;
    f->base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);  // the mapping keeps the file referenced
  f->ParseAll(options);
  return f;
}

std::unique_ptr<GgufFile> GgufFile::Parse(const uint8_t* data, size_t size, const GgufOptions& options) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = "<memory>";
  f->base_ = data;
  f->size_ = size;
  f->ParseAll(options);
  return f;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufValue& GgufFile::Get(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (!v) Bad(path_ + ": missing metadata key " + Quoted(key));
  return *v;
}

const GgufTensor* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensor& GgufFile::GetTensor(std::string_view name) const {
  const GgufTensor* t = FindTensor(name);
  if (!t) Bad(path_ + ": missing tensor " + Quoted(name));
  return *t;
}

void GgufFile::ParseAll(const GgufOptions& options) {
  try {
    ParseUnchecked(options);
  } catch (const Error& e) {
    // Name the file in every parse error; the code stays as raised.
    throw Error(e.code(), "invalid GGUF model " + path_ + ": " + e.what());
  }
}

void GgufFile::ParseUnchecked(const GgufOptions& options) {
  Reader r(base_, size_);

  // Header: magic, version, tensor count, metadata count (v1 used 32-bit counts and is not supported).
  if (size_ < 4) Bad("file is " + std::to_string(size_) + " bytes, too short for the GGUF magic");
  uint32_t magic = r.U32("magic");
  if (magic != kMagic) Bad("bad magic (not a GGUF file)");
  version_ = r.U32("version");
  if (version_ != 2 && version_ != 3) {
    std::string hint = (version_ & 0xFFFFu) == 0 && version_ != 0 ? " (a big-endian file?)" : "";
    Bad("unsupported GGUF version " + std::to_string(version_) + hint + "; versions 2 and 3 are supported");
  }
  uint64_t n_tensors = r.U64("tensor count");
  uint64_t n_kv = r.U64("metadata count");
  // Each metadata pair needs at least 8 (key length) + 4 (type) + 1 bytes, each tensor info 8 + 4 + 4 + 8.
  // Checking the counts up front keeps a hostile count from driving a long loop or a large allocation.
  if (n_kv > r.remaining() / 13)
    Bad("metadata count " + std::to_string(n_kv) + " cannot fit in the " + std::to_string(r.remaining()) +
        " bytes after the header");
  if (n_tensors > r.remaining() / 24)
    Bad("tensor count " + std::to_string(n_tensors) + " cannot fit in the " + std::to_string(r.remaining()) +
        " bytes after the header");

  // Metadata.
  // No reserve() from the counts: vectors grow only with what is actually parsed.
  for (uint64_t k = 0; k < n_kv; ++k) {
    GgufValue v;
    v.key_ = r.String("metadata key");
    uint32_t type = r.U32("metadata value type");
    if (!KnownType(type)) Bad("metadata " + Quoted(v.key_) + " has unknown value type " + std::to_string(type));
    v.type_ = static_cast<GgufType>(type);
    if (v.type_ == GgufType::STRING) {
      v.str_ = r.String("metadata string");
    } else if (v.type_ == GgufType::ARRAY) {
      uint32_t et = r.U32("array element type");
      if (!KnownType(et)) Bad("metadata " + Quoted(v.key_) + " is an array of unknown type " + std::to_string(et));
      v.array_type_ = static_cast<GgufType>(et);
      if (v.array_type_ == GgufType::ARRAY) Bad("metadata " + Quoted(v.key_) + " is a nested array (unsupported)");
      v.count_ = r.U64("array length");
      if (v.array_type_ == GgufType::STRING) {
        if (v.count_ > r.remaining() / 8)
          Bad("metadata " + Quoted(v.key_) + " claims " + std::to_string(v.count_) + " strings, more than the " +
              std::to_string(r.remaining()) + " remaining bytes can hold");
        for (uint64_t i = 0; i < v.count_; ++i) v.strings_.push_back(r.String("metadata array string"));
      } else {
        uint64_t bytes;
        if (MulOverflows(v.count_, ScalarSize(v.array_type_), &bytes) || bytes > r.remaining())
          Bad("metadata " + Quoted(v.key_) + " claims " + std::to_string(v.count_) + " elements of " +
              GgufTypeName(v.array_type_) + ", more than the " + std::to_string(r.remaining()) + " remaining bytes");
        v.raw_ = r.Take(bytes, "metadata array");
        if (v.array_type_ == GgufType::BOOL) {
          for (uint64_t i = 0; i < v.count_; ++i)
            if (v.raw_[i] > 1) Bad("metadata " + Quoted(v.key_) + " has a bool element that is neither 0 nor 1");
        }
      }
    } else {
      DecodeScalar(v.type_, r.Take(ScalarSize(v.type_), "metadata value"), &v.u_, &v.i_, &v.f_);
      if (v.type_ == GgufType::BOOL && v.u_ > 1)
        Bad("metadata " + Quoted(v.key_) + " is a bool that is neither 0 nor 1");
    }
    if (!kv_index_.emplace(v.key_, kv_.size()).second) Bad("duplicate metadata key " + Quoted(v.key_));
    std::string_view key = v.key_;
    kv_.emplace_back(key, std::move(v));
  }

  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type() != GgufType::UINT32)
      Bad("general.alignment must be a uint32, not " + std::string(GgufTypeName(a->type())));
    alignment_ = a->AsUInt();
    if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0)
      Bad("general.alignment " + std::to_string(alignment_) + " is not a power of two");
  }

  // Tensor infos.
  for (uint64_t k = 0; k < n_tensors; ++k) {
    GgufTensor t;
    t.name = r.String("tensor name");
    std::string qname = Quoted(t.name);
    t.n_dims = r.U32("tensor dimension count");
    if (t.name.empty()) Bad("tensor " + std::to_string(k) + " has an empty name");
    if (t.n_dims == 0 || t.n_dims > kMaxDims)
      Bad("tensor " + qname + " has " + std::to_string(t.n_dims) + " dimensions (1 to 4 expected)");
    t.n_elements = 1;
    for (uint32_t d = 0; d < t.n_dims; ++d) {
      t.ne[d] = r.U64("tensor dimension");
      if (t.ne[d] == 0) Bad("tensor " + qname + " has a zero dimension");
      // ggml keeps sizes in int64_t.
      if (MulOverflows(t.n_elements, t.ne[d], &t.n_elements) ||
          t.n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        Bad("tensor " + qname + " element count overflows");
    }
    uint32_t type = r.U32("tensor type");
    t.offset = r.U64("tensor offset");

    GgmlTypeTraits tr = TypeTraits(type);
    if (!tr.name)
      throw Error(code::kUnsupportedTensorType,
                  "tensor " + qname + " has unknown or unsupported ggml type id " + std::to_string(type));
    t.type = static_cast<GgmlType>(type);
    if (options.require_dequantizable && !tr.dequantizable)
      throw Error(code::kUnsupportedTensorType,
                  "tensor " + qname + " has type " + tr.name +
                      ", which this engine cannot read (supported: F32, F16, BF16, Q8_0, Q4_0, "
                      "Q4_1, Q4_K, Q6_K)");
    if (t.ne[0] % static_cast<uint64_t>(tr.block_size) != 0)
      Bad("tensor " + qname + " row length " + std::to_string(t.ne[0]) + " is not a multiple of the " + tr.name +
          " block size " + std::to_string(tr.block_size));
    if (MulOverflows(t.n_elements / static_cast<uint64_t>(tr.block_size), static_cast<uint64_t>(tr.type_size),
                     &t.n_bytes))
      Bad("tensor " + qname + " byte size overflows");
    if (t.offset % alignment_ != 0)
      Bad("tensor " + qname + " offset " + std::to_string(t.offset) + " is not a multiple of the alignment " +
          std::to_string(alignment_));
    if (!tensor_index_.emplace(t.name, tensors_.size()).second) Bad("duplicate tensor name " + qname);
    tensors_.push_back(t);
  }

  // Data section: starts at the next multiple of the alignment after the tensor infos.
  uint64_t end_of_infos = r.pos();
  uint64_t pad = (alignment_ - end_of_infos % alignment_) % alignment_;
  data_offset_ = end_of_infos + pad;  // cannot overflow: end_of_infos <= size_t max, alignment < 2^32
  if (tensors_.empty()) return;
  if (data_offset_ > size_)
    Bad("truncated: the data section would start at offset " + std::to_string(data_offset_) + ", past the end of the " +
        std::to_string(size_) + "-byte file");
  uint64_t data_size = size_ - data_offset_;
  for (GgufTensor& t : tensors_) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      std::ostringstream m;
      m << "tensor " << Quoted(t.name) << " data [" << t.offset << ", +" << t.n_bytes << ") lies outside the "
        << data_size << "-byte data section (file truncated or corrupt)";
      Bad(m.str());
    }
    t.data = base_ + data_offset_ + t.offset;
  }
}

}  // namespace kvf::engine
