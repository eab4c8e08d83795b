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
// Tile registers: GCC's AMX intrinsics paste the register number into the asm, so the calls spell it.
constexpr int kTileA = 0, kTileB = 1, kTileC = 2;  // tmm0: activations, tmm1: weights, tmm2: sums

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

void Configure() {
  TileConfig cfg;
  cfg.rows[kTileA] = kTileTokens, cfg.colsb[kTileA] = 32;  // 16 tokens x 32 activation bytes
  cfg.rows[kTileB] = 8, cfg.colsb[kTileB] = 64;            // 8 groups of 4 elements x 16 rows
  cfg.rows[kTileC] = kTileTokens, cfg.colsb[kTileC] = 64;  // 16 tokens x 16 int32
  _tile_loadconfig(&cfg);
}

// Tile B of each block of a Q4_x panel, unsigned nibbles: groups 0-3 from the low nibbles, 4-7 from the high.
void UnpackNibbles(const PackedView& v, const PackedLayout& L) {
  const __m512i m4 = _mm512_set1_epi8(0x0F);
  for (int64_t b = 0; b < v.n_blocks; ++b) {
    const uint8_t* q = v.panel + b * L.bytes + L.quants;
    uint8_t* out = v.tiles + b * 512;
    for (int c = 0; c < 4; ++c) {
      const __m512i raw = _mm512_loadu_si512(q + 64 * c);
      _mm512_storeu_si512(out + 64 * c, _mm512_and_si512(raw, m4));
      _mm512_storeu_si512(out + 64 * (c + 4), _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4));
    }
  }
}

template <PackedKind K>
void TokenTile(const PackedView& v, const PackedLayout& L, int64_t t0) {
  const int64_t nb = v.n_blocks;
  alignas(64) int32_t c[kTileTokens][16];
  __m512 acc[kTileTokens], summ[kTileTokens];
  for (int i = 0; i < kTileTokens; ++i) acc[i] = summ[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = v.panel + b * L.bytes;
    _tile_zero(2);
    _tile_loadd(0, v.xq + (t0 * nb + b) * 32, nb * 32);
    if constexpr (K == PackedKind::kQ8_0) {
      _tile_loadd(1, blk + L.quants, 64);
      _tile_dpbssd(2, 0, 1);
    } else {
      _tile_loadd(1, v.tiles + b * 512, 64);
      _tile_dpbsud(2, 0, 1);
    }
    _tile_stored(2, c, 64);
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.scales)));
    __m512 m = _mm512_setzero_ps();
    if constexpr (K == PackedKind::kQ4_1)
      m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + L.mins)));
    for (int i = 0; i < kTileTokens; ++i) {
      const int64_t tb = (t0 + i) * nb + b;
      __m512i s = _mm512_load_si512(c[i]);
      if constexpr (K == PackedKind::kQ4_0) s = _mm512_sub_epi32(s, _mm512_set1_epi32(8 * v.xsum[tb]));
      acc[i] = _mm512_add_ps(acc[i], _mm512_mul_ps(_mm512_mul_ps(d, _mm512_set1_ps(v.xd[tb])), _mm512_cvtepi32_ps(s)));
      if constexpr (K == PackedKind::kQ4_1)
        summ[i] = _mm512_add_ps(summ[i], _mm512_mul_ps(m, _mm512_set1_ps(v.xs[tb])));
    }
  }
  const __mmask16 rows = static_cast<__mmask16>((1u << v.rows) - 1);
  for (int i = 0; i < kTileTokens; ++i)
    _mm512_mask_storeu_ps(v.y + (t0 + i) * v.y_stride, rows,
                          K == PackedKind::kQ4_1 ? _mm512_add_ps(acc[i], summ[i]) : acc[i]);
}

template <PackedKind K>
int64_t TileTokens(const PackedView& v) {
  const int64_t full = v.n_tokens / kTileTokens * kTileTokens;
  if (full == 0) return 0;
  const PackedLayout& L = LayoutOf(K);
  Configure();
  if constexpr (K != PackedKind::kQ8_0) UnpackNibbles(v, L);
  for (int64_t t0 = 0; t0 < full; t0 += kTileTokens) TokenTile<K>(v, L, t0);
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
