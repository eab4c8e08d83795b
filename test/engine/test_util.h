// Shared helpers for the engine tests: model paths, error-code assertions and the kernels this CPU runs.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/qdot.h"

namespace kvf::engine::testing {

// Every kernel level this CPU runs, from plain C up.
inline std::vector<QdotIsa> SupportedIsas() {
  std::vector<QdotIsa> out;
  for (QdotIsa isa : {QdotIsa::kScalar, QdotIsa::kAvx2, QdotIsa::kAvx512Vnni, QdotIsa::kAmx})
    if (QdotIsaSupported(isa)) out.push_back(isa);
  return out;
}

inline bool FileExists(const std::string& p) {
  struct stat st;
  return !p.empty() && stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// The generated tiny model: $KVF_TINY_MODEL, else the one the build generated.
inline std::string TinyModelPath() {
  if (const char* e = std::getenv("KVF_TINY_MODEL")) return e;
#ifdef KVF_TINY_MODEL_PATH
  return KVF_TINY_MODEL_PATH;
#else
  return "models/tiny-llama.gguf";
#endif
}

// The tiny model with a 4096-position context: $KVF_TINY_LONG_MODEL, else the one the build generated.
inline std::string TinyLongModelPath() {
  if (const char* e = std::getenv("KVF_TINY_LONG_MODEL")) return e;
#ifdef KVF_TINY_LONG_MODEL_PATH
  return KVF_TINY_LONG_MODEL_PATH;
#else
  return "models/tiny-llama-long.gguf";
#endif
}

// SmolLM2-135M-Instruct.Q4_1.gguf as `npm run fetch-model` caches it ($KVF_MODEL_CACHE or
// ~/.cache/kvfabric/models), or $KVF_REAL_MODEL; "" when absent (the tests using it are skipped).
inline std::string RealModelPath() {
  std::string p;
  if (const char* e = std::getenv("KVF_REAL_MODEL")) p = e;
  else if (const char* c = std::getenv("KVF_MODEL_CACHE")) p = std::string(c) + "/SmolLM2-135M-Instruct.Q4_1.gguf";
  else if (const char* h = std::getenv("HOME")) p = std::string(h) + "/.cache/kvfabric/models/SmolLM2-135M-Instruct.Q4_1.gguf";
  return FileExists(p) ? p : "";
}

// The code of the kvf::Error that fn throws; "" if it returns, "<other exception>" for anything else.
inline std::string ThrownCode(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const kvf::Error& e) {
    return e.code();
  } catch (...) {
    return "<other exception>";
  }
  return "";
}

}  // namespace kvf::engine::testing
