// AMX-INT8 kernel of packed.h: 16 tokens x 16 rows per tile product. A block of 32 elements is one TDPBSUD
// (signed activations x unsigned nibbles) or TDPBSSD (Q8_0): tile A is 16 tokens' 32 activation bytes, tile B
// the panel block (8 rows of 4 elements x 16 weight rows, packed.h's layout as it is), tile C the 16 x 16 exact
// int32 sums S. The float part of the arithmetic is then applied to C with AVX-512, block by block, in the
// order packed.h fixes. Tokens left over (fewer than 16) go through the AVX-512 VNNI kernel: the same bits.
#include "engine/packed_kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

namespace kvf::engine {

bool AmxUsable() {
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    if (!tile || !int8) return false;
    // Linux hands out the 8 KiB tile state only on request (ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA), once
    // per process; a kernel without it (before 5.16) or a sandbox refusing it leaves AMX off.
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return usable;
}

}  // namespace kvf::engine

#pragma GCC push_options
#pragma GCC target("avx2,f16c,avx512f,avx512vl,avx512bw,avx512vnni,amx-tile,amx-int8")
// GCC 12 warns about the undefined pass-through operand inside _mm512_cvtph_ps / _mm512_cvtepi32_ps.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kvf::engine {
namespace {

constexpr int kTileTokens = 16;
// GCC's AMX intrinsics paste the tile register number into the asm, so the calls spell it.

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Two sets, used by alternate blocks: tmm0 / tmm3 activations, tmm1 / tmm4 weights, tmm2 / tmm5 sums.
void Configure() {
  TileConfig cfg;
  for (int set = 0; set < 2; ++set) {
    cfg.rows[3 * set] = kTileTokens, cfg.colsb[3 * set] = 32;          // 16 tokens x 32 activation bytes
    cfg.rows[3 * set + 1] = 8, cfg.colsb[3 * set + 1] = 64;            // 8 groups of 4 elements x 16 rows
    cfg.rows[3 * set + 2] = kTileTokens, cfg.colsb[3 * set + 2] = 64;  // 16 tokens x 16 int32
  }
  _tile_loadconfig(&cfg);
}

// The kernel's part of PackedView::tiles (kAmxScratchPerBlock bytes per block, 64-byte aligned).
struct AmxScratch {
  uint8_t* b;    // [block][512]: tile B
  int32_t* c;    // [block][16][16]: tile C
  float* scale;  // [block][16]
  float* min;    // [block][16]
  static AmxScratch In(uint8_t* base, int64_t n_blocks) {
    AmxScratch s;
    s.b = base;
    s.c = reinterpret_cast<int32_t*>(base + n_blocks * 512);
    s.scale = reinterpret_cast<float*>(base + n_blocks * (512 + 1024));
    s.min = s.scale + n_blocks * 16;
    return s;
  }
};
static_assert(kAmxScratchPerBlock == 512 + 1024 + 64 + 64, "tile B, tile C, scales and mins of one block");

// Per panel: tile B of each block (Q4_x: unsigned nibbles, groups 0-3 from the low nibbles, 4-7 from the high;
// Q8_0 is loaded from the panel as it is) and the block's scales and mins as floats.
template <PackedKind K>
void Prepare(const PackedView& v, const PackedLayout& L, const AmxScratch& s) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < v.n_blocks; ++b) {
    const uint8_t* blk = v.panel + b * L.bytes;
    PrefetchBlock(blk + kPrefetchBlocks * L.bytes, L.bytes);
    _mm512_store_ps(s.scale + 16 * b,
                    _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.scales))));
    if constexpr (K == PackedKind::kQ4_1)
      _mm512_store_ps(s.min + 16 * b,
                      _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.mins))));
    if constexpr (K == PackedKind::kQ8_0) continue;
    uint8_t* out = s.b + b * 512;
    for (int c = 0; c < 4; ++c) {
      const __m512i raw = _mm512_loadu_si512(blk + L.quants + 64 * c);
      _mm512_store_si512(out + 64 * c, _mm512_and_si512(raw, m4));
      _mm512_store_si512(out + 64 * (c + 4), _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
    }
  }
}

// The float part for tokens t .. t+kFloatTokens-1 (rows i.. of the C tiles), interleaved so that their
// dependency chains (one add per block) overlap.
constexpr int kFloatTokens = 4;
static_assert(kTileTokens % kFloatTokens == 0, "the float part covers a token tile exactly");

template <PackedKind K>
void FloatPart(const PackedView& v, const AmxScratch& s, int64_t t, int i) {
  const int64_t nb = v.n_blocks;
  __m512 acc[kFloatTokens], summ[kFloatTokens];
  for (int j = 0; j < kFloatTokens; ++j) acc[j] = summ[j] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 scale = _mm512_load_ps(s.scale + 16 * b);
    for (int j = 0; j < kFloatTokens; ++j) {
      const int64_t tb = (t + j) * nb + b;
      __m512i sum = _mm512_load_si512(s.c + b * 256 + (i + j) * 16);
      if constexpr (K == PackedKind::kQ4_0) sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(8 * v.xsum[tb]));
      acc[j] =
          _mm512_add_ps(acc[j], _mm512_mul_ps(_mm512_mul_ps(scale, _mm512_set1_ps(v.xd[tb])), _mm512_cvtepi32_ps(sum)));
      if constexpr (K == PackedKind::kQ4_1)
        summ[j] = _mm512_add_ps(summ[j], _mm512_mul_ps(_mm512_load_ps(s.min + 16 * b), _mm512_set1_ps(v.xs[tb])));
    }
  }
  const __mmask16 rows = static_cast<__mmask16>((1u << v.rows) - 1);
  for (int j = 0; j < kFloatTokens; ++j)
    _mm512_mask_storeu_ps(v.y + (t + j) * v.y_stride, rows,
                          K == PackedKind::kQ4_1 ? _mm512_add_ps(acc[j], summ[j]) : acc[j]);
}

// Tokens t0..t0+15: first every block's tile product into s.c (two C tiles in turn, so that one block's
// product overlaps the other's store), then the float part, blocks in order.
template <PackedKind K>
void TokenTile(const PackedView& v, const PackedLayout& L, const AmxScratch& s, int64_t t0) {
  const int64_t nb = v.n_blocks;
  const int8_t* a = v.xq + t0 * nb * 32;
  for (int64_t b = 0; b < nb; ++b) {
    const void* wb = K == PackedKind::kQ8_0 ? static_cast<const void*>(v.panel + b * L.bytes + L.quants)
                                            : static_cast<const void*>(s.b + b * 512);
    int32_t* c = s.c + b * 256;
    if (b % 2 == 0) {
      _tile_zero(2);
      _tile_loadd(0, a + b * 32, nb * 32);
      _tile_loadd(1, wb, 64);
      if constexpr (K == PackedKind::kQ8_0)
        _tile_dpbssd(2, 0, 1);
      else
        _tile_dpbsud(2, 0, 1);
      _tile_stored(2, c, 64);
    } else {
      _tile_zero(5);
      _tile_loadd(3, a + b * 32, nb * 32);
      _tile_loadd(4, wb, 64);
      if constexpr (K == PackedKind::kQ8_0)
        _tile_dpbssd(5, 3, 4);
      else
        _tile_dpbsud(5, 3, 4);
      _tile_stored(5, c, 64);
    }
  }
  for (int i = 0; i < kTileTokens; i += kFloatTokens) FloatPart<K>(v, s, t0 + i, i);
}

template <PackedKind K>
int64_t TileTokens(const PackedView& v) {
  const int64_t full = v.n_tokens / kTileTokens * kTileTokens;
  if (full == 0) return 0;
  const PackedLayout& L = LayoutOf(K);
  const AmxScratch s = AmxScratch::In(v.tiles, v.n_blocks);
  // The thread may be shared with another AMX user (llama.cpp in the same process configures its tiles once
  // per thread and counts on them staying so): its configuration is put back afterwards.
  TileConfig saved;
  _tile_storeconfig(&saved);
  Configure();
  Prepare<K>(v, L, s);
  for (int64_t t0 = 0; t0 < full; t0 += kTileTokens) TokenTile<K>(v, L, s, t0);
  if (saved.palette != 0)
    _tile_loadconfig(&saved);
  else
    _tile_release();
  return full;
}

}  // namespace

void PackedPanelAmx(const PackedView& v) {
  int64_t done = 0;
  switch (v.kind) {
    case PackedKind::kQ8_0:
      done = TileTokens<PackedKind::kQ8_0>(v);
      break;
    case PackedKind::kQ4_0:
      done = TileTokens<PackedKind::kQ4_0>(v);
      break;
    case PackedKind::kQ4_1:
      done = TileTokens<PackedKind::kQ4_1>(v);
      break;
  }
  if (done == v.n_tokens) return;
  PackedView rest = v;
  const int64_t skip = done * v.n_blocks;
  rest.n_tokens -= done;
  rest.xq += skip * 32, rest.xd += skip, rest.xs += skip, rest.xsum += skip;
  rest.y += done * v.y_stride;
  PackedPanelAvx512Vnni(rest);
}

}  // namespace kvf::engine
#pragma GCC diagnostic pop
#pragma GCC pop_options

#else
namespace kvf::engine {
bool AmxUsable() { return false; }
void PackedPanelAmx(const PackedView& v) { PackedPanelScalar(v); }  // never selected off x86
}  // namespace kvf::engine
#endif
