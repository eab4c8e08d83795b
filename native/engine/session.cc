#include "engine/session.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/activation.h"
#include "engine/dequant.h"
#include "engine/qdot.h"

namespace kvf::engine {
namespace {

// Dot products of R rows with one vector, 8 interleaved accumulators per row. The per-row sequence of
// operations is the same for every R, so a row's result does not depend on how rows were tiled (and
// hence not on the thread count or batch size).
constexpr int kLanes = 8;
constexpr int kTile = 4;
static_assert(kTile <= kQTileRows, "a row tile must fit an UnpackedRows");

template <int R>
inline void DotRows(const float* const* w, const float* __restrict x, int64_t n, float* out) {
  float acc[R][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int r = 0; r < R; ++r)
      for (int l = 0; l < kLanes; ++l) acc[r][l] += w[r][i + l] * x[i + l];
  for (int64_t l = 0; i + l < n; ++l)
    for (int r = 0; r < R; ++r) acc[r][l] += w[r][i + l] * x[i + l];
  for (int r = 0; r < R; ++r) {
    float s = 0;
    for (int l = 0; l < kLanes; ++l) s += acc[r][l];
    out[r] = s;
  }
}

// y = x / rms(x) * w, as ggml_compute_forward_rms_norm_f32 followed by the weight multiply.
void RmsNorm(const float* x, const float* w, int64_t n, float eps, float* y) {
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i] * x[i]);
  const float mean = static_cast<float>(sum / static_cast<double>(n));
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

// Rotates adjacent pairs of the first rope_dim elements of each head (rope type NORM).
void Rope(float* v, int heads, int head_dim, int rope_dim, const float* cs, const float* sn) {
  for (int h = 0; h < heads; ++h) {
    float* p = v + static_cast<int64_t>(h) * head_dim;
    for (int i = 0; i < rope_dim / 2; ++i) {
      const float x0 = p[2 * i], x1 = p[2 * i + 1];
      p[2 * i] = x0 * cs[i] - x1 * sn[i];
      p[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
    }
  }
}

// y[t * y_stride + i] = w_i · x_t for the `tile` (<= kTile) dequantized rows w_i (K floats each, contiguous)
// and each of n_tokens activation rows. Cloned for AVX2 (no FMA, so results are identical to the
// baseline clone): the loops are the same, the vectors twice as wide.
__attribute__((target_clones("avx2", "default"))) void TileDots(const float* w, int tile, const float* x,
                                                                int64_t n_tokens, int64_t K, float* y,
                                                                int64_t y_stride) {
  const float* wr[kTile];
  for (int i = 0; i < tile; ++i) wr[i] = w + i * K;
  for (int64_t t = 0; t < n_tokens; ++t) {
    float* yt = y + t * y_stride;
    if (tile == kTile) {
      DotRows<kTile>(wr, x + t * K, K, yt);
    } else {
      for (int i = 0; i < tile; ++i) DotRows<1>(&wr[i], x + t * K, K, yt + i);
    }
  }
}

uint64_t NowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

[[noreturn]] void Invalid(const std::string& msg) { throw Error(code::kInvalidArgument, msg); }

}  // namespace

KvLayout KvLayoutFor(const Model& model, int tokens_per_block, KvDtype dtype) {
  const LlamaHparams& hp = model.hparams();
  KvLayout l;
  l.num_layers = hp.n_layer;
  l.num_kv_heads = hp.n_head_kv;
  l.head_dim = hp.head_dim;
  l.tokens_per_block = tokens_per_block;
  l.dtype = dtype;
  l.Validate();
  return l;
}

int32_t Argmax(const std::vector<float>& logits) {
  if (logits.empty()) return -1;
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Session::Session(const Model& model, KvPool& pool, const SessionOptions& options)
    : model_(model), pool_(pool), options_(options), pool_threads_(options.threads), isa_(BestQdotIsa()) {
  const LlamaHparams& hp = model.hparams();
  const KvLayout& l = pool.layout();
  if (l.num_layers != hp.n_layer || l.num_kv_heads != hp.n_head_kv || l.head_dim != hp.head_dim)
    Invalid("KV pool layout (layers " + std::to_string(l.num_layers) + ", kv heads " + std::to_string(l.num_kv_heads) +
            ", head dim " + std::to_string(l.head_dim) + ") does not match the model (" + std::to_string(hp.n_layer) +
            ", " + std::to_string(hp.n_head_kv) + ", " + std::to_string(hp.head_dim) + ")");
  if (options_.max_batch <= 0) options_.max_batch = 512;
  const int64_t max_k = std::max({hp.n_embd, hp.n_ff, hp.n_head * hp.head_dim});
  // Per thread: a tile of dequantized weight rows.
  const int64_t need = kTile * max_k;
  scratch_.assign(static_cast<size_t>(pool_threads_.size()), std::vector<float>(static_cast<size_t>(need)));
  unpacked_.resize(static_cast<size_t>(pool_threads_.size()));
  packed_scratch_.resize(static_cast<size_t>(pool_threads_.size()));
}

// Work is split between threads in units: a 16-row panel of a packed matrix, or kTile rows of another.
void Session::MatMul(const MatJob* jobs, int n_jobs, const float* x, int64_t n_tokens) {
  const uint64_t t0 = NowNs();
  int64_t total = 0;
  bool quantized = false;
  for (int j = 0; j < n_jobs; ++j) {
    const PackedMatrix* p = model_.packed(*jobs[j].w);
    const int64_t rows = static_cast<int64_t>(jobs[j].w->rows());
    total += p ? p->n_panels : (rows + kTile - 1) / kTile;
    quantized = quantized || HasQuantizedDot(jobs[j].w->type);
  }
  if (quantized) {
    // Once per batch, shared by all rows (the jobs of one MatMul all read the same x).
    xq_.Resize(n_tokens, static_cast<int64_t>(jobs[0].w->row_length()));
    pool_threads_.ParallelFor(n_tokens, [&](int64_t begin, int64_t end, int) { xq_.Quantize(x, begin, end); });
  }
  pool_threads_.ParallelFor(total, [&](int64_t begin, int64_t end, int thread) {
    int64_t job_start = 0;
    for (int j = 0; j < n_jobs && begin < end; ++j) {
      const GgufTensor& w = *jobs[j].w;
      const PackedMatrix* packed = model_.packed(w);
      const int64_t rows = static_cast<int64_t>(w.rows());
      const int64_t units = packed ? packed->n_panels : (rows + kTile - 1) / kTile;
      const int64_t lo = std::max(begin, job_start) - job_start, hi = std::min(end, job_start + units) - job_start;
      job_start += units;
      if (lo >= hi) continue;
      if (packed)
        PackedDots(*packed, lo, hi, xq_, jobs[j].y, rows, isa_, packed_scratch_[static_cast<size_t>(thread)]);
      else
        RowTiles(w, lo * kTile, std::min(rows, hi * kTile), x, n_tokens, jobs[j].y, thread);
    }
  });
  timings_.matmul_ns += NowNs() - t0;
}

// Rows [lo, hi) of a matrix that is not packed, kTile at a time: unpacked for the lane-wise quantized dot
// (qdot.h), or dequantized to float.
void Session::RowTiles(const GgufTensor& w, int64_t lo, int64_t hi, const float* x, int64_t n_tokens, float* y,
                       int thread) {
  const int64_t rows = static_cast<int64_t>(w.rows()), K = static_cast<int64_t>(w.row_length());
  const uint64_t row_bytes = w.row_bytes();
  float* scratch = scratch_[static_cast<size_t>(thread)].data();
  UnpackedRows& unpacked = unpacked_[static_cast<size_t>(thread)];
  for (int64_t r = lo; r < hi; r += kTile) {
    const int tile = static_cast<int>(std::min<int64_t>(kTile, hi - r));
    if (HasQuantizedDot(w.type)) {
      unpacked.Unpack(w.type, w.data + static_cast<uint64_t>(r) * row_bytes, row_bytes, tile, K);
      QuantizedTileDots(unpacked, xq_, y + r, rows, isa_);
      continue;
    }
    for (int i = 0; i < tile; ++i)
      DequantizeRow(w.type, w.data + static_cast<uint64_t>(r + i) * row_bytes, scratch + i * K, K);
    TileDots(scratch, tile, x, n_tokens, K, y + r, rows);
  }
}

void Session::StoreKv(int layer, const BlockTable& table, int64_t start, int64_t n, const float* k, const float* v) {
  const LlamaHparams& hp = model_.hparams();
  const KvLayout& l = pool_.layout();
  const int64_t hd = hp.head_dim, tpb = l.tokens_per_block, kv_dim = static_cast<int64_t>(hp.n_head_kv) * hd;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t;
    const int32_t block = table[static_cast<size_t>(pos / tpb)];
    const int64_t slot = pos % tpb;
    for (int kv = 0; kv < 2; ++kv) {
      uint8_t* section = pool_.base() + l.Offset(block, layer, kv);
      const float* src = (kv == 0 ? k : v) + t * kv_dim;
      for (int h = 0; h < hp.n_head_kv; ++h) {
        const int64_t elem = (h * tpb + slot) * hd;
        const float* s = src + h * hd;
        if (l.dtype == KvDtype::F32) {
          std::memcpy(section + elem * 4, s, static_cast<size_t>(hd) * 4);
        } else {
          for (int64_t i = 0; i < hd; ++i) {
            const uint16_t hbits = Fp32ToFp16(s[i]);
            std::memcpy(section + (elem + i) * 2, &hbits, 2);
          }
        }
      }
    }
  }
}

void Session::Attention(int layer, const std::vector<Segment>& segs, const std::vector<int64_t>& first) {
  const uint64_t t0 = NowNs();
  const LlamaHparams& hp = model_.hparams();
  const int64_t q_dim = static_cast<int64_t>(hp.n_head) * hp.head_dim;
  attn_args_.resize(segs.size());
  for (size_t i = 0; i < segs.size(); ++i) {
    AttentionArgs& a = attn_args_[i];
    a.pool = &pool_;
    a.layer = layer;
    a.table = segs[i].table;
    a.n_head = hp.n_head;
    a.start = segs[i].start;
    a.n = segs[i].n;
    a.q = q_.data() + first[i] * q_dim;
    a.out = attn_.data() + first[i] * q_dim;
    a.scale = 1.0f / std::sqrt(static_cast<float>(hp.head_dim));
    a.isa = isa_;
  }
  PagedAttention(attn_args_.data(), static_cast<int>(attn_args_.size()), pool_threads_, attn_scratch_);
  timings_.attention_ns += NowNs() - t0;
}

void Session::Forward(const std::vector<Segment>& segs) {
  const LlamaHparams& hp = model_.hparams();
  const int64_t E = hp.n_embd, F = hp.n_ff, hd = hp.head_dim;
  const int64_t q_dim = static_cast<int64_t>(hp.n_head) * hd, kv_dim = static_cast<int64_t>(hp.n_head_kv) * hd;
  const int half = hp.rope_dim / 2;
  int64_t n = 0;  // rows of all segments
  for (const Segment& s : segs) n += s.n;
  auto size = [n](std::vector<float>& v, int64_t per_token) { v.resize(static_cast<size_t>(n * per_token)); };
  size(x_, E), size(xn_, E), size(q_, q_dim), size(k_, kv_dim), size(v_, kv_dim), size(attn_, q_dim);
  size(tmp_, E), size(gate_, F), size(up_, F), size(rope_cos_, half), size(rope_sin_, half);

  // Embeddings and RoPE angles per row, as ggml_rope_cache_init (ext_factor 0, freq_scale 1, attn_factor 1):
  // each depends on the row's own token and position only.
  const GgufTensor& embd = model_.token_embd();
  const float theta_scale = std::pow(hp.rope_freq_base, -2.0f / static_cast<float>(hp.rope_dim));
  std::vector<int64_t> first(segs.size()), last_rows;
  int64_t row = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    first[i] = row;
    for (int64_t t = 0; t < segs[i].n; ++t, ++row) {
      DequantizeRow(embd, static_cast<uint64_t>(segs[i].tokens[t]), x_.data() + row * E);
      float theta = static_cast<float>(segs[i].start + t);
      for (int j = 0; j < half; ++j) {
        rope_cos_[static_cast<size_t>(row * half + j)] = std::cos(theta);
        rope_sin_[static_cast<size_t>(row * half + j)] = std::sin(theta);
        theta *= theta_scale;
      }
    }
    if (segs[i].logits) last_rows.push_back(row - 1);
  }

  for (int layer = 0; layer < hp.n_layer; ++layer) {
    // Only when every sequence of the pass has ended: one request's cancel must not fail the others.
    if (std::all_of(segs.begin(), segs.end(), [](const Segment& s) { return s.cancel.raised(); }))
      throw Error(code::kCancelled, "forward pass cancelled at layer " + std::to_string(layer));
    const LlamaLayer& L = model_.layers()[static_cast<size_t>(layer)];
    PerToken(n, [&](int64_t t) { RmsNorm(x_.data() + t * E, L.attn_norm.data(), E, hp.rms_eps, xn_.data() + t * E); });
    const MatJob qkv[3] = {{L.wq, q_.data()}, {L.wk, k_.data()}, {L.wv, v_.data()}};
    MatMul(qkv, 3, xn_.data(), n);
    PerToken(n, [&](int64_t t) {
      const float* cs = rope_cos_.data() + t * half;
      const float* sn = rope_sin_.data() + t * half;
      Rope(q_.data() + t * q_dim, hp.n_head, hp.head_dim, hp.rope_dim, cs, sn);
      Rope(k_.data() + t * kv_dim, hp.n_head_kv, hp.head_dim, hp.rope_dim, cs, sn);
    });
    // Every sequence's K/V first, then their attention in one dispatch (their blocks do not overlap).
    for (size_t i = 0; i < segs.size(); ++i)
      StoreKv(layer, *segs[i].table, segs[i].start, segs[i].n, k_.data() + first[i] * kv_dim,
              v_.data() + first[i] * kv_dim);
    Attention(layer, segs, first);
    const MatJob wo{L.wo, tmp_.data()};
    MatMul(&wo, 1, attn_.data(), n);
    PerToken(n, [&](int64_t t) {
      for (int64_t i = t * E; i < (t + 1) * E; ++i) x_[static_cast<size_t>(i)] += tmp_[static_cast<size_t>(i)];
      RmsNorm(x_.data() + t * E, L.ffn_norm.data(), E, hp.rms_eps, xn_.data() + t * E);
    });
    const MatJob gu[2] = {{L.ffn_gate, gate_.data()}, {L.ffn_up, up_.data()}};
    MatMul(gu, 2, xn_.data(), n);
    PerToken(n, [&](int64_t t) { SiluMul(gate_.data() + t * F, up_.data() + t * F, F); });
    const MatJob down{L.ffn_down, tmp_.data()};
    MatMul(&down, 1, gate_.data(), n);
    PerToken(n, [&](int64_t t) {
      for (int64_t i = t * E; i < (t + 1) * E; ++i) x_[static_cast<size_t>(i)] += tmp_[static_cast<size_t>(i)];
    });
  }
  if (!last_rows.empty()) Logits(segs, last_rows);
}

// The output head over the last row of each segment that wants logits, as one batch of rows.
void Session::Logits(const std::vector<Segment>& segs, const std::vector<int64_t>& last_rows) {
  const LlamaHparams& hp = model_.hparams();
  const int64_t E = hp.n_embd, V = hp.n_vocab, m = static_cast<int64_t>(last_rows.size());
  for (int64_t i = 0; i < m; ++i)
    RmsNorm(x_.data() + last_rows[static_cast<size_t>(i)] * E, model_.output_norm().data(), E, hp.rms_eps,
            xn_.data() + i * E);
  out_.resize(static_cast<size_t>(m * V));
  const MatJob out{&model_.output(), out_.data()};
  MatMul(&out, 1, xn_.data(), m);
  int64_t i = 0;
  for (const Segment& s : segs)
    if (s.logits) std::memcpy(s.logits, out_.data() + (i++) * V, static_cast<size_t>(V) * sizeof(float));
}

}  // namespace kvf::engine
