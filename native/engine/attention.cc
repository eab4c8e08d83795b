// PagedAttention (attention.h): the tiles, chunks and work items, the chunk merge, the plain-C TileStep and
// the ISA dispatch. Built with -ffp-contract=off (CMakeLists.txt) like the SIMD kernels, so all give the same bits.
#include "engine/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "engine/attention_kernels.h"
#include "engine/half.h"

namespace kvf::engine {
namespace {

static_assert(kChunk % kKvTile == 0, "a chunk is a whole number of tiles");
static_assert(kKvTile % kAttnLanes == 0, "the probability sum reads whole lane groups");

inline float Tree16(const float* a) {
  float b[8], c[4];
  for (int i = 0; i < 8; ++i) b[i] = a[i] + a[i + 8];
  for (int i = 0; i < 4; ++i) c[i] = b[i] + b[i + 4];
  const float d0 = c[0] + c[2], d1 = c[1] + c[3];
  return d0 + d1;
}

using TileStepFn = void (*)(const float*, const float*, const float*, int, int, float, float*, float*, float*);
using HalfFn = void (*)(const uint16_t*, int64_t, float*);

void HalfToFloatScalar(const uint16_t* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half::HalfToFloat(src[i]);
}

struct Kernels {
  TileStepFn step;
  HalfFn half;
};

Kernels KernelsFor(QdotIsa isa, int hd) {
#if defined(__x86_64__)
  const bool simd = hd % kAttnLanes == 0 && hd <= 256;
  if (simd && (isa == QdotIsa::kAvx512Vnni || isa == QdotIsa::kAmx)) return {AttnTileStepAvx512, AttnHalfToFloatAvx512};
  if (simd && isa != QdotIsa::kScalar && AttnAvx2Usable()) return {AttnTileStepAvx2, AttnHalfToFloatAvx2};
  if (isa != QdotIsa::kScalar) return {AttnTileStepScalar, AttnHalfToFloatAvx2};
#endif
  return {AttnTileStepScalar, HalfToFloatScalar};
}

// A row state is [m, l, acc[hd]]; l == 0 means empty.
inline void Reset(float* st, int hd) {
  st[0] = -INFINITY;
  st[1] = 0.0f;
  std::fill(st + 2, st + 2 + hd, 0.0f);
}

// t = Merge(t, s) for a non-empty s, in the one order every path uses.
void Merge(float* t, const float* s, int hd) {
  if (t[1] == 0.0f) {
    std::memcpy(t, s, static_cast<size_t>(hd + 2) * sizeof(float));
    return;
  }
  const float m = std::max(t[0], s[0]);
  const float a = ExpNeg(t[0] - m), b = ExpNeg(s[0] - m);
  t[0] = m;
  t[1] = t[1] * a + s[1] * b;
  for (int i = 0; i < hd; ++i) t[2 + i] = t[2 + i] * a + s[2 + i] * b;
}

inline void Finish(const float* t, int hd, float* out) {
  const float inv = 1.0f / t[1];
  for (int i = 0; i < hd; ++i) out[i] = t[2 + i] * inv;
}

}  // namespace

void AttnTileStepScalar(const float* q, const float* k, const float* v, int n_keys, int hd, float scale, float* m,
                        float* l, float* acc) {
  float s[kKvTile], p[kKvTile];
  float mt = -INFINITY;
  for (int j = 0; j < n_keys; ++j) {
    const float* kj = k + static_cast<int64_t>(j) * hd;
    float a[kAttnLanes];
    for (int i = 0; i < kAttnLanes; ++i) a[i] = i < hd ? q[i] * kj[i] : 0.0f;
    for (int c = kAttnLanes; c < hd; c += kAttnLanes)
      for (int i = 0; i < kAttnLanes && c + i < hd; ++i) a[i] = std::fma(q[c + i], kj[c + i], a[i]);
    s[j] = Tree16(a) * scale;
    mt = std::max(mt, s[j]);
  }
  const float mx = std::max(*m, mt);
  for (int j = 0; j < kKvTile; ++j) p[j] = j < n_keys ? ExpNeg(s[j] - mx) : 0.0f;
  float u[kAttnLanes];
  for (int i = 0; i < kAttnLanes; ++i) u[i] = p[i];
  for (int b = kAttnLanes; b < kKvTile; b += kAttnLanes)
    for (int i = 0; i < kAttnLanes; ++i) u[i] = u[i] + p[b + i];
  const float lt = Tree16(u);
  if (*l > 0.0f && mx > *m) {
    const float c = ExpNeg(*m - mx);
    *l = *l * c;
    for (int i = 0; i < hd; ++i) acc[i] = acc[i] * c;
  }
  *l = *l + lt;
  for (int j = 0; j < n_keys; ++j) {
    const float* vj = v + static_cast<int64_t>(j) * hd;
    for (int i = 0; i < hd; ++i) acc[i] = std::fma(p[j], vj[i], acc[i]);
  }
  *m = mx;
}

void PagedAttention(const AttentionArgs* seqs, int count, ThreadPool& threads, AttentionScratch& scratch) {
  if (count == 0) return;
  // What every sequence of the call shares: the pool (its layout), the layer, the heads, the scale and the ISA.
  const AttentionArgs& common = seqs[0];
  const KvLayout& lay = common.pool->layout();
  const int hd = lay.head_dim, n_kv = lay.num_kv_heads, group = common.n_head / n_kv;
  const int64_t tpb = lay.tokens_per_block, q_dim = static_cast<int64_t>(common.n_head) * hd, stride = hd + 2;
  const Kernels kern = KernelsFor(common.isa, hd);
  auto chunks_for = [](int64_t positions) { return (positions + kChunk - 1) / kChunk; };

  // Items of every sequence. A sequence is split by chunk when its (KV head, query tile) items are too few for
  // the threads; the results are the same either way.
  std::vector<AttentionScratch::Item>& items = scratch.items;
  items.clear();
  scratch.partial_at.assign(static_cast<size_t>(count) + 1, 0);
  std::vector<bool> split(static_cast<size_t>(count));
  for (int s = 0; s < count; ++s) {
    const AttentionArgs& a = seqs[s];
    const int64_t n_qt = (a.n + kQueryTile - 1) / kQueryTile, n_chunks = chunks_for(a.start + a.n);
    split[static_cast<size_t>(s)] = n_chunks > 1 && n_kv * n_qt < 4 * threads.size();
    scratch.partial_at[static_cast<size_t>(s) + 1] =
        scratch.partial_at[static_cast<size_t>(s)] +
        (split[static_cast<size_t>(s)] ? static_cast<size_t>(a.n * a.n_head * n_chunks * stride) : 0);
    for (int64_t qt = n_qt - 1; qt >= 0; --qt) {  // the longest first
      const int64_t last = a.start + std::min(a.n, (qt + 1) * kQueryTile);
      for (int kvh = 0; kvh < n_kv; ++kvh) {
        if (!split[static_cast<size_t>(s)])
          items.push_back({s, kvh, qt, 0, chunks_for(last)});
        else
          for (int64_t c = 0; c < chunks_for(last); ++c) items.push_back({s, kvh, qt, c, c + 1});
      }
    }
  }
  scratch.partial.resize(scratch.partial_at.back());

  const int64_t rows = static_cast<int64_t>(kQueryTile) * group;
  const size_t tile_floats = static_cast<size_t>(kKvTile) * hd;
  const size_t need = 2 * tile_floats + 2 * static_cast<size_t>(rows * stride);
  scratch.per_thread.resize(static_cast<size_t>(threads.size()));
  for (auto& buf : scratch.per_thread)
    if (buf.size() < need) buf.resize(need);

  // K (kv 0) or V rows of positions [j0, j1) of KV head kvh of sequence a, as floats.
  auto gather = [&](const AttentionArgs& a, int kv, int kvh, int64_t j0, int64_t j1, float* dst) {
    const BlockTable& table = *a.table;
    for (int64_t pos = j0; pos < j1;) {
      const int64_t slot = pos % tpb, run = std::min(j1 - pos, tpb - slot);
      const uint8_t* src = a.pool->base() + lay.Offset(table[static_cast<size_t>(pos / tpb)], a.layer, kv) +
                           static_cast<size_t>((kvh * tpb + slot) * hd) * lay.elem_bytes();
      if (lay.dtype == KvDtype::F16)
        kern.half(reinterpret_cast<const uint16_t*>(src), run * hd, dst);
      else
        std::memcpy(dst, src, static_cast<size_t>(run * hd) * sizeof(float));
      dst += run * hd;
      pos += run;
    }
  };

  auto run_item = [&](const AttentionScratch::Item& it, int thread) {
    const AttentionArgs& a = seqs[it.seq];
    const bool split_seq = split[static_cast<size_t>(it.seq)];
    const int64_t n_chunks = chunks_for(a.start + a.n);
    float* partial = scratch.partial.data() + scratch.partial_at[static_cast<size_t>(it.seq)];
    float* buf = scratch.per_thread[static_cast<size_t>(thread)].data();
    float *kt = buf, *vt = buf + tile_floats, *S = vt + tile_floats, *T = S + rows * stride;
    const int64_t t0 = it.qt * kQueryTile, t1 = std::min(a.n, t0 + kQueryTile);
    const int64_t last = a.start + t1;  // positions the tile's last query sees
    auto state = [&](float* base, int64_t t, int g) { return base + ((t - t0) * group + g) * stride; };
    for (int64_t t = t0; t < t1; ++t)
      for (int g = 0; g < group; ++g) Reset(state(T, t, g), hd);
    for (int64_t c = it.c0; c < it.c1; ++c) {
      const int64_t cs = c * kChunk, ce = std::min(cs + kChunk, last);
      for (int64_t t = t0; t < t1; ++t)
        for (int g = 0; g < group; ++g) Reset(state(S, t, g), hd);
      for (int64_t j0 = cs; j0 < ce; j0 += kKvTile) {
        const int64_t j1 = std::min(j0 + kKvTile, ce);
        gather(a, 0, it.kvh, j0, j1, kt);
        gather(a, 1, it.kvh, j0, j1, vt);
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t seen = a.start + t + 1;
          if (seen <= j0) continue;
          const int nk = static_cast<int>(std::min(j1, seen) - j0);
          for (int g = 0; g < group; ++g) {
            float* st = state(S, t, g);
            const int h = it.kvh * group + g;
            kern.step(a.q + t * q_dim + h * hd, kt, vt, nk, hd, a.scale, st, st + 1, st + 2);
          }
        }
      }
      for (int64_t t = t0; t < t1; ++t) {
        if (a.start + t + 1 <= cs) continue;
        for (int g = 0; g < group; ++g) {
          const int h = it.kvh * group + g;
          if (split_seq)
            std::memcpy(partial + ((t * a.n_head + h) * n_chunks + c) * stride, state(S, t, g),
                        static_cast<size_t>(stride) * sizeof(float));
          else
            Merge(state(T, t, g), state(S, t, g), hd);
        }
      }
    }
    if (split_seq) return;
    for (int64_t t = t0; t < t1; ++t)
      for (int g = 0; g < group; ++g)
        Finish(state(T, t, g), hd, a.out + t * q_dim + static_cast<int64_t>(it.kvh * group + g) * hd);
  };

  std::atomic<size_t> next{0};
  const int64_t workers = std::min<int64_t>(threads.size(), static_cast<int64_t>(items.size()));
  threads.ParallelFor(workers, [&](int64_t, int64_t, int thread) {
    for (size_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < items.size();) run_item(items[i], thread);
  });

  // The split sequences' chunk states merged in chunk order, one (query, head) row at a time.
  for (int s = 0; s < count; ++s) {
    if (!split[static_cast<size_t>(s)]) continue;
    const AttentionArgs& a = seqs[s];
    const int64_t n_chunks = chunks_for(a.start + a.n);
    const float* partial = scratch.partial.data() + scratch.partial_at[static_cast<size_t>(s)];
    auto merge_rows = [&](int64_t begin, int64_t end, int thread) {
      float* T = scratch.per_thread[static_cast<size_t>(thread)].data();
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = r / a.n_head;
        Reset(T, hd);
        for (int64_t c = 0; c < chunks_for(a.start + t + 1); ++c) Merge(T, partial + (r * n_chunks + c) * stride, hd);
        Finish(T, hd, a.out + r * hd);
      }
    };
    const int64_t n_rows = a.n * a.n_head;
    if (n_rows * n_chunks < 1024)
      merge_rows(0, n_rows, 0);
    else
      threads.ParallelFor(n_rows, merge_rows);
  }
}

}  // namespace kvf::engine
