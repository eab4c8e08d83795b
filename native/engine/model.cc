#include "engine/model.h"

#include <string>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/dequant.h"

namespace kvf::engine {
namespace {

[[noreturn]] void Bad(const std::string& msg) { throw Error(code::kBadModel, msg); }

int PositiveInt(const GgufFile& f, const std::string& key) {
  const uint64_t v = f.Get(key).AsUInt();
  if (v == 0 || v > (1u << 30)) Bad("metadata " + key + " = " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

// The tensor `name`, checked to be a matrix of rows of `cols` elements and `rows` rows (a vector when
// rows == 0), of a type we can dequantize.
const GgufTensor& Tensor(const GgufFile& f, const std::string& name, uint64_t cols, uint64_t rows) {
  const GgufTensor* t = f.FindTensor(name);
  if (!t) Bad("missing tensor " + name);
  const bool shape_ok =
      rows == 0 ? (t->n_dims == 1 && t->ne[0] == cols) : (t->n_dims == 2 && t->ne[0] == cols && t->ne[1] == rows);
  if (!shape_ok)
    Bad("tensor " + name + " has shape " + t->ShapeString() + ", expected [" + std::to_string(cols) +
        (rows ? ", " + std::to_string(rows) : "") + "]");
  if (!CanDequantize(t->type))
    throw Error(code::kUnsupportedTensorType,
                "tensor " + name + " has type " + TypeName(t->type) + ", which the engine cannot read");
  return *t;
}

std::vector<float> Vector(const GgufFile& f, const std::string& name, uint64_t n) {
  const GgufTensor& t = Tensor(f, name, n, 0);
  std::vector<float> v(n);
  DequantizeRow(t.type, t.data, v.data(), static_cast<int64_t>(n));
  return v;
}

}  // namespace

std::unique_ptr<Model> Model::Load(const std::string& path) {
  GgufOptions opts;
  opts.require_dequantizable = false;  // a tensor we do not use may have any type; ours are checked below
  return FromGguf(GgufFile::Open(path, opts));
}

std::unique_ptr<Model> Model::FromGguf(std::unique_ptr<GgufFile> file) {
  if (!file) throw Error(code::kInvalidArgument, "no GGUF file");
  std::unique_ptr<Model> m(new Model());
  m->file_ = std::move(file);
  const GgufFile& f = *m->file_;
  const std::string arch(f.Get("general.architecture").AsString());
  if (arch != "llama") Bad("general.architecture is \"" + arch + "\", the engine runs \"llama\" only");

  LlamaHparams& hp = m->hp_;
  hp.n_layer = PositiveInt(f, "llama.block_count");
  hp.n_embd = PositiveInt(f, "llama.embedding_length");
  hp.n_head = PositiveInt(f, "llama.attention.head_count");
  hp.n_head_kv = f.Find("llama.attention.head_count_kv") ? PositiveInt(f, "llama.attention.head_count_kv") : hp.n_head;
  hp.n_ff = PositiveInt(f, "llama.feed_forward_length");
  hp.n_ctx = PositiveInt(f, "llama.context_length");
  if (hp.n_embd % hp.n_head != 0)
    Bad("embedding_length " + std::to_string(hp.n_embd) + " is not a multiple of head_count " +
        std::to_string(hp.n_head));
  if (hp.n_head % hp.n_head_kv != 0)
    Bad("head_count " + std::to_string(hp.n_head) + " is not a multiple of head_count_kv " +
        std::to_string(hp.n_head_kv));
  hp.head_dim = hp.n_embd / hp.n_head;
  if (const GgufValue* kl = f.Find("llama.attention.key_length"))
    if (kl->AsUInt() != static_cast<uint64_t>(hp.head_dim))
      Bad("attention.key_length differs from embedding_length / head_count");
  hp.rope_dim = f.Find("llama.rope.dimension_count") ? PositiveInt(f, "llama.rope.dimension_count") : hp.head_dim;
  if (hp.rope_dim > hp.head_dim || hp.rope_dim % 2 != 0)
    Bad("rope.dimension_count " + std::to_string(hp.rope_dim) + " does not fit head dim " +
        std::to_string(hp.head_dim));
  if (const GgufValue* v = f.Find("llama.rope.freq_base")) hp.rope_freq_base = static_cast<float>(v->AsFloat());
  hp.rms_eps = static_cast<float>(f.Get("llama.attention.layer_norm_rms_epsilon").AsFloat());
  if (!(hp.rope_freq_base > 0) || !(hp.rms_eps >= 0)) Bad("rope.freq_base or layer_norm_rms_epsilon out of range");

  const GgufTensor* embd = f.FindTensor("token_embd.weight");
  if (!embd) Bad("missing tensor token_embd.weight");
  if (embd->n_dims != 2 || embd->ne[1] == 0 || embd->ne[1] > (1u << 30))
    Bad("token_embd.weight has shape " + embd->ShapeString());
  hp.n_vocab = static_cast<int>(embd->ne[1]);
  if (const GgufValue* vs = f.Find("llama.vocab_size"))
    if (vs->AsUInt() != static_cast<uint64_t>(hp.n_vocab))
      Bad("llama.vocab_size " + std::to_string(vs->AsUInt()) + " differs from token_embd rows " +
          std::to_string(hp.n_vocab));

  const uint64_t E = static_cast<uint64_t>(hp.n_embd), V = static_cast<uint64_t>(hp.n_vocab);
  const uint64_t Q = static_cast<uint64_t>(hp.n_head) * hp.head_dim,
                 KV = static_cast<uint64_t>(hp.n_head_kv) * hp.head_dim;
  const uint64_t F = static_cast<uint64_t>(hp.n_ff);
  m->token_embd_ = &Tensor(f, "token_embd.weight", E, V);
  m->output_ = f.FindTensor("output.weight") ? &Tensor(f, "output.weight", E, V) : m->token_embd_;
  m->output_norm_ = Vector(f, "output_norm.weight", E);
  // Layers are added as their tensors are found, not sized by block_count up front: a file claiming 2^31 layers
  // made resize() ask for tens of GB, and the std::bad_alloc ended the process (the fuzzer's find).
  for (int l = 0; l < hp.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LlamaLayer& L = m->layers_.emplace_back();
    L.attn_norm = Vector(f, p + "attn_norm.weight", E);
    L.wq = &Tensor(f, p + "attn_q.weight", E, Q);
    L.wk = &Tensor(f, p + "attn_k.weight", E, KV);
    L.wv = &Tensor(f, p + "attn_v.weight", E, KV);
    L.wo = &Tensor(f, p + "attn_output.weight", Q, E);
    L.ffn_norm = Vector(f, p + "ffn_norm.weight", E);
    L.ffn_gate = &Tensor(f, p + "ffn_gate.weight", E, F);
    L.ffn_up = &Tensor(f, p + "ffn_up.weight", E, F);
    L.ffn_down = &Tensor(f, p + "ffn_down.weight", F, E);
  }
  // Matrices of the 32-element block types are multiplied from 16-row panels, packed once here.
  std::vector<const GgufTensor*> matrices{m->output_};
  for (const LlamaLayer& L : m->layers_)
    matrices.insert(matrices.end(), {L.wq, L.wk, L.wv, L.wo, L.ffn_gate, L.ffn_up, L.ffn_down});
  for (const GgufTensor* t : matrices)
    if (Packable(t->type) && m->packed_.count(t) == 0)
      m->packed_.emplace(t, PackMatrix(t->type, t->data, static_cast<int64_t>(t->rows()),
                                       static_cast<int64_t>(t->row_length()), t->row_bytes()));
  return m;
}

const PackedMatrix* Model::packed(const GgufTensor& t) const {
  const auto it = packed_.find(&t);
  return it == packed_.end() ? nullptr : &it->second;
}

}  // namespace kvf::engine
