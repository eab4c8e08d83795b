// A Llama-architecture model read from GGUF: hyperparameters from the llama.* metadata and views of the
// weight tensors (which stay in the file mapping; only the small norm vectors are copied out as float).
// Errors: KVF_ERR_BAD_MODEL (not llama, missing key or tensor, inconsistent shapes) and
// KVF_ERR_UNSUPPORTED_TENSOR_TYPE (a weight dequant.cc cannot read).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/gguf.h"
#include "engine/packed.h"

namespace kvf::engine {

struct LlamaHparams {
  int n_layer = 0;
  int n_embd = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;  // n_embd / n_head
  int n_ff = 0;
  int n_vocab = 0;   // rows of token_embd
  int n_ctx = 0;     // llama.context_length: the longest sequence the engine accepts
  int rope_dim = 0;  // llama.rope.dimension_count, default head_dim
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
};

struct LlamaLayer {
  std::vector<float> attn_norm;    // n_embd
  const GgufTensor* wq = nullptr;  // [n_embd] -> [n_head * head_dim]
  const GgufTensor* wk = nullptr;  // [n_embd] -> [n_head_kv * head_dim]
  const GgufTensor* wv = nullptr;
  const GgufTensor* wo = nullptr;  // [n_head * head_dim] -> [n_embd]
  std::vector<float> ffn_norm;
  const GgufTensor* ffn_gate = nullptr;  // [n_embd] -> [n_ff]
  const GgufTensor* ffn_up = nullptr;
  const GgufTensor* ffn_down = nullptr;  // [n_ff] -> [n_embd]
};

class Model {
 public:
  static std::unique_ptr<Model> Load(const std::string& path);
  static std::unique_ptr<Model> FromGguf(std::unique_ptr<GgufFile> file);

  const LlamaHparams& hparams() const { return hp_; }
  const GgufFile& gguf() const { return *file_; }
  const GgufTensor& token_embd() const { return *token_embd_; }
  const GgufTensor& output() const { return *output_; }  // token_embd when tied
  bool tied_output() const { return output_ == token_embd_; }
  const std::vector<float>& output_norm() const { return output_norm_; }
  const std::vector<LlamaLayer>& layers() const { return layers_; }
  // The matrix repacked into 16-row panels (packed.h), or null for a type that is not packed.
  const PackedMatrix* packed(const GgufTensor& t) const;

 private:
  Model() = default;
  std::unique_ptr<GgufFile> file_;
  LlamaHparams hp_;
  const GgufTensor* token_embd_ = nullptr;
  const GgufTensor* output_ = nullptr;
  std::vector<float> output_norm_;
  std::vector<LlamaLayer> layers_;
  std::unordered_map<const GgufTensor*, PackedMatrix> packed_;
};

}  // namespace kvf::engine
