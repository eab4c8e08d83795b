// Built with -ffp-contract=off (see CMakeLists.txt): a fused multiply-add would round differently from
// ggml's reference (and gguf-py), and the results must not depend on the target having FMA.
#include "engine/dequant.h"

#include <cmath>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/half.h"

namespace kvf::engine {
namespace {

using half::BitsToFloat;
using half::FloatToBits;
using half::HalfToFloat;
using half::Load16;

// ---------------------------------------------------------------------------------------------------------
// One block each, following ggml's dequantize_row_* (ggml-quants.c) operation for operation. __restrict
// tells the compiler that the float stores cannot change the block bytes (uint8_t aliases anything),
// which the vectoriser needs.

// block_q8_0 { half d; int8 qs[32]; }
inline void BlockQ8_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = HalfToFloat(Load16(b));
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// block_q4_0 { half d; uint8 qs[16]; }: element j in the low nibble of qs[j], j + 16 in the high one.
inline void BlockQ4_0(const uint8_t* __restrict b, float* __restrict y) {
  const float d = HalfToFloat(Load16(b));
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// block_q4_1 { half d; half m; uint8 qs[16]; }
inline void BlockQ4_1(const uint8_t* __restrict b, float* __restrict y) {
  const float d = HalfToFloat(Load16(b));
  const float m = HalfToFloat(Load16(b + 2));
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q4_K's 8 six-bit scales and mins, packed into 12 bytes (ggml's get_scale_min_k4).
inline void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }: 8 sub-blocks of 32, each with its
// own scale and min; sub-blocks 2k and 2k+1 share qs[32k .. 32k+32) (low and high nibbles).
inline void BlockQ4_K(const uint8_t* __restrict b, float* __restrict y) {
  const float d = HalfToFloat(Load16(b));
  const float dmin = HalfToFloat(Load16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 4 + K_SCALE_SIZE;
  for (int j = 0, is = 0; j < QK_K; j += 64, is += 2, q += 32) {
    uint8_t sc, m;
    ScaleMinK4(is, scales, &sc, &m);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(m);
    ScaleMinK4(is + 1, scales, &sc, &m);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(m);
    for (int l = 0; l < 32; ++l) y[j + l] = d1 * static_cast<float>(q[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) y[j + 32 + l] = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

// block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }: 6-bit values, low 4 bits in ql,
// high 2 bits in qh, one int8 scale per 16 elements.
inline void BlockQ6_K(const uint8_t* __restrict b, float* __restrict y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + QK_K / 2;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + QK_K / 2 + QK_K / 4);
  const float d = HalfToFloat(Load16(b + QK_K / 2 + QK_K / 4 + QK_K / 16));
  for (int n = 0; n < QK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
    for (int half = 0; half < 2; ++half) {  // ggml's is = l / 16: one scale per 16 elements
      const float s1 = d * static_cast<float>(sc[half]);
      const float s2 = d * static_cast<float>(sc[half + 2]);
      const float s3 = d * static_cast<float>(sc[half + 4]);
      const float s4 = d * static_cast<float>(sc[half + 6]);
      for (int l = 16 * half; l < 16 * half + 16; ++l) {
        const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = s1 * static_cast<float>(q1);
        y[l + 32] = s2 * static_cast<float>(q2);
        y[l + 64] = s3 * static_cast<float>(q3);
        y[l + 96] = s4 * static_cast<float>(q4);
      }
    }
  }
}

using BlockFn = void (*)(const uint8_t*, float*);

static_assert(TypeTraits(GgmlType::Q8_0).type_size == 34 && TypeTraits(GgmlType::Q4_0).type_size == 18 &&
                  TypeTraits(GgmlType::Q4_1).type_size == 20 && TypeTraits(GgmlType::Q4_K).type_size == 144 &&
                  TypeTraits(GgmlType::Q6_K).type_size == 210,
              "block sizes below must match ggml");

template <BlockFn F, int64_t QK, int64_t BYTES>
void DequantBlocks(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / QK; ++i) F(src + i * BYTES, dst + i * QK);
}

// Fixed, interleaved accumulation order: vectorises without -ffast-math (each lane is its own
// sequential sum) and gives the same result on every target.
constexpr int kLanes = 16;

inline void Accumulate(const float* a, const float* x, int64_t n, float* acc) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += a[i + l] * x[i + l];
  const int64_t tail = n - i;  // < kLanes; always 0 for the block types (32 and 256 elements)
  for (int64_t l = 0; l < tail && l < kLanes; ++l) acc[l] += a[i + l] * x[i + l];
}

inline float Reduce(const float* acc) {
  float s = 0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

template <BlockFn F, int64_t QK, int64_t BYTES>
float DotBlocks(const uint8_t* src, const float* x, int64_t n) {
  float acc[kLanes] = {};
  float tmp[QK];
  for (int64_t i = 0; i < n / QK; ++i) {
    F(src + i * BYTES, tmp);
    Accumulate(tmp, x + i * QK, QK, acc);
  }
  return Reduce(acc);
}

void HalfRowPlain(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(Load16(src + 2 * i));
}

#if defined(__x86_64__)
// F16C's conversion is exact too (subnormals included; a signalling NaN comes back quiet), so both give the
// same values; this one is several
// times faster, which matters for the F16 KV cache rows that attention converts at every step.
__attribute__((target("avx,f16c"))) void HalfRowF16c(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i))));
  for (; i < n; ++i) dst[i] = HalfToFloat(Load16(src + 2 * i));
}

bool HasF16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
}
#endif

void HalfRow(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
#if defined(__x86_64__)
  static const bool f16c = HasF16c();
  if (f16c) return HalfRowF16c(src, dst, n);
#endif
  HalfRowPlain(src, dst, n);
}

void Bf16Row(const uint8_t* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = BitsToFloat(static_cast<uint32_t>(Load16(src + 2 * i)) << 16);
}

// F16 and BF16 dots convert a chunk at a time onto the stack, then accumulate.
template <void (*Convert)(const uint8_t*, float*, int64_t)>
float DotHalfLike(const uint8_t* src, const float* x, int64_t n) {
  constexpr int64_t kChunk = 256;
  float acc[kLanes] = {};
  float tmp[kChunk];
  for (int64_t i = 0; i < n; i += kChunk) {
    const int64_t m = n - i < kChunk ? n - i : kChunk;
    Convert(src + 2 * i, tmp, m);
    Accumulate(tmp, x + i, m, acc);
  }
  return Reduce(acc);
}

[[noreturn]] void Unsupported(GgmlType type) {
  throw Error(code::kUnsupportedTensorType, std::string("cannot dequantize tensor type ") + TypeName(type) + " (id " +
                                                std::to_string(static_cast<uint32_t>(type)) + ")");
}

void CheckLength(GgmlType type, int64_t n) {
  const GgmlTypeTraits tr = TypeTraits(type);
  if (!tr.dequantizable) Unsupported(type);
  if (n < 0 || n % tr.block_size != 0)
    throw Error(code::kInvalidArgument, "row length " + std::to_string(n) + " is not a multiple of the " + tr.name +
                                            " block size " + std::to_string(tr.block_size));
}

}  // namespace

float Fp16ToFp32(uint16_t h) { return HalfToFloat(h); }

float Bf16ToFp32(uint16_t h) { return BitsToFloat(static_cast<uint32_t>(h) << 16); }

uint16_t Fp32ToFp16(float f) { return half::FloatToHalf(f); }

bool CanDequantize(GgmlType type) { return TypeTraits(type).dequantizable; }

void DequantizeRow(GgmlType type, const void* src_v, float* dst, int64_t n) {
  CheckLength(type, n);
  const auto* src = static_cast<const uint8_t*>(src_v);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      HalfRow(src, dst, n);
      return;
    case GgmlType::BF16:
      Bf16Row(src, dst, n);
      return;
    case GgmlType::Q8_0:
      DequantBlocks<BlockQ8_0, QK8_0, 34>(src, dst, n);
      return;
    case GgmlType::Q4_0:
      DequantBlocks<BlockQ4_0, QK4_0, 18>(src, dst, n);
      return;
    case GgmlType::Q4_1:
      DequantBlocks<BlockQ4_1, QK4_1, 20>(src, dst, n);
      return;
    case GgmlType::Q4_K:
      DequantBlocks<BlockQ4_K, QK_K, 144>(src, dst, n);
      return;
    case GgmlType::Q6_K:
      DequantBlocks<BlockQ6_K, QK_K, 210>(src, dst, n);
      return;
    default:
      Unsupported(type);
  }
}

float DotRow(GgmlType type, const void* src_v, const float* x, int64_t n) {
  CheckLength(type, n);
  const auto* src = static_cast<const uint8_t*>(src_v);
  switch (type) {
    case GgmlType::F32: {
      // Element loads through memcpy: GGUF only promises general.alignment, which may be below 4.
      float acc[kLanes] = {};
      int64_t i = 0;
      for (; i + kLanes <= n; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
          float a;
          std::memcpy(&a, src + 4 * (i + l), 4);
          acc[l] += a * x[i + l];
        }
      }
      for (int64_t l = 0; i + l < n && l < kLanes; ++l) {
        float a;
        std::memcpy(&a, src + 4 * (i + l), 4);
        acc[l] += a * x[i + l];
      }
      return Reduce(acc);
    }
    case GgmlType::F16:
      return DotHalfLike<HalfRow>(src, x, n);
    case GgmlType::BF16:
      return DotHalfLike<Bf16Row>(src, x, n);
    case GgmlType::Q8_0:
      return DotBlocks<BlockQ8_0, QK8_0, 34>(src, x, n);
    case GgmlType::Q4_0:
      return DotBlocks<BlockQ4_0, QK4_0, 18>(src, x, n);
    case GgmlType::Q4_1:
      return DotBlocks<BlockQ4_1, QK4_1, 20>(src, x, n);
    case GgmlType::Q4_K:
      return DotBlocks<BlockQ4_K, QK_K, 144>(src, x, n);
    case GgmlType::Q6_K:
      return DotBlocks<BlockQ6_K, QK_K, 210>(src, x, n);
    default:
      Unsupported(type);
  }
}

void DequantizeRow(const GgufTensor& t, uint64_t r, float* dst) {
  DequantizeRow(t.type, t.row(r), dst, static_cast<int64_t>(t.row_length()));
}

float DotRow(const GgufTensor& t, uint64_t r, const float* x) {
  return DotRow(t.type, t.row(r), x, static_cast<int64_t>(t.row_length()));
}

}  // namespace kvf::engine
