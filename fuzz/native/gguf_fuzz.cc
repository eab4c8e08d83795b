// libFuzzer target: the C++ GGUF reader and model loader (native/engine/gguf.cc, model.cc) and the KV layout
// derived from it (session.cc KvLayoutFor), which the engine runs on a model file before any weight is used.
// Any input must end in a parsed model or a kvf::Error with KVF_ERR_BAD_MODEL / KVF_ERR_UNSUPPORTED_TENSOR_TYPE;
// a crash, sanitizer report, other exception, hang or allocation past libFuzzer's malloc limit is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/session.h"

namespace {

// Reads every value and every tensor's first and last byte, so that a view past the input is caught by
// AddressSanitizer here rather than later in the engine.
unsigned Touch(const kvf::engine::GgufFile& file) {
  unsigned sum = 0;
  for (const auto& [key, value] : file.metadata()) {
    sum += static_cast<unsigned>(key.size() + value.Describe().size());
    if (value.is_array() && value.array_type() == kvf::engine::GgufType::STRING) {
      for (auto s : value.Strings()) sum += s.empty() ? 0 : static_cast<unsigned char>(s.back());
    }
  }
  for (const auto& t : file.tensors()) {
    if (t.n_bytes > 0) sum += t.data[0] + t.data[t.n_bytes - 1];
    sum += static_cast<unsigned>(t.ShapeString().size());
  }
  return sum;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto file = kvf::engine::GgufFile::Parse(data, size);
    volatile unsigned sink = Touch(*file);
    (void)sink;
    auto model = kvf::engine::Model::FromGguf(std::move(file));
    // What NativeEngine.blockBytes() and a worker's KV pool derive from the model's hyperparameters.
    (void)kvf::engine::KvLayoutFor(*model, 16, kvf::engine::KvDtype::F16).block_bytes();
  } catch (const kvf::Error& e) {
    if (e.code() != "KVF_ERR_BAD_MODEL" && e.code() != "KVF_ERR_UNSUPPORTED_TENSOR_TYPE") {
      std::fprintf(stderr, "unexpected error code %s: %s\n", e.code().c_str(), e.what());
      std::abort();
    }
  }
  return 0;
}
