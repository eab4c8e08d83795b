// Activation quantization, weight unpacking, the plain-C kernel and the ISA dispatch of qdot.h. Built
// with -ffp-contract=off (CMakeLists.txt) like the SIMD kernels, so all give the same bits.
#include "engine/qdot.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"
#include "engine/half.h"
#include "engine/packed_kernels.h"
#include "engine/qdot_kernels.h"

namespace kvf::engine {
namespace {

using half::HalfToFloat;
using half::Load16;

// A float rounded through fp16, as ggml stores block scales.
inline float ViaHalf(float f) { return HalfToFloat(half::FloatToHalf(f)); }

inline void SetScale(float* sc, float lo, float hi) {
  for (int l = 0; l < 4; ++l) sc[l] = lo;
  for (int l = 4; l < 8; ++l) sc[l] = hi;
}

// One weight block (or super-block) into out_q (int8 per element, natural order), out_sc (8 per
// 32-element block) and out_min (1 per 32-element block). Scales are computed as dequant.cc computes
// them, so the float values of w are exactly the dequantized ones.
void UnpackQ8_0(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = HalfToFloat(Load16(b));
  std::memcpy(q, b + 2, 32);
  SetScale(sc, d, d);
}

void UnpackQ4_0(const uint8_t* b, int8_t* q, float* sc, float*) {
  const float d = HalfToFloat(Load16(b));
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<int8_t>((b[2 + j] & 0x0F) - 8);
    q[j + 16] = static_cast<int8_t>((b[2 + j] >> 4) - 8);
  }
  SetScale(sc, d, d);
}

void UnpackQ4_1(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  const float d = HalfToFloat(Load16(b));
  *mn = HalfToFloat(Load16(b + 2));
  for (int j = 0; j < 16; ++j) {
    q[j] = static_cast<int8_t>(b[4 + j] & 0x0F);
    q[j + 16] = static_cast<int8_t>(b[4 + j] >> 4);
  }
  SetScale(sc, d, d);
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

// 8 sub-blocks: 2k from the low nibbles of qs[32k..32k+32), 2k+1 from the high ones; w = d1 * q - m1.
void UnpackQ4_K(const uint8_t* b, int8_t* q, float* sc, float* mn) {
  const float d = HalfToFloat(Load16(b));
  const float dmin = HalfToFloat(Load16(b + 2));
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 4 + K_SCALE_SIZE;
  for (int k = 0; k < 4; ++k, qs += 32) {
    for (int h = 0; h < 2; ++h) {
      const int sub = 2 * k + h;
      uint8_t s, m;
      ScaleMinK4(sub, scales, &s, &m);
      const float d1 = d * static_cast<float>(s);
      SetScale(sc + 8 * sub, d1, d1);
      mn[sub] = -(dmin * static_cast<float>(m));
      for (int l = 0; l < 32; ++l) q[32 * sub + l] = static_cast<int8_t>(h == 0 ? qs[l] & 0x0F : qs[l] >> 4);
    }
  }
}

// Natural element e of each 128-half uses scale sc[e / 16]: two scales per 32-element block.
void UnpackQ6_K(const uint8_t* b, int8_t* q, float* sc, float*) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + QK_K / 2;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + QK_K / 2 + QK_K / 4);
  const float d = HalfToFloat(Load16(b + QK_K / 2 + QK_K / 4 + QK_K / 16));
  for (int n = 0; n < 2; ++n, ql += 64, qh += 32, q += 128) {
    for (int l = 0; l < 32; ++l) {
      q[l] = static_cast<int8_t>(((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32);
      q[l + 32] = static_cast<int8_t>(((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32);
      q[l + 64] = static_cast<int8_t>(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      q[l + 96] = static_cast<int8_t>(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
    for (int blk = 0; blk < 4; ++blk) {
      const int is = 8 * n + 2 * blk;
      SetScale(sc + 8 * (4 * n + blk), d * static_cast<float>(scales[is]), d * static_cast<float>(scales[is + 1]));
    }
  }
}

struct UnpackFormat {
  void (*fn)(const uint8_t*, int8_t*, float*, float*);
  int64_t elems;  // per block of the type
  int64_t bytes;
  bool with_min;
  QUnpackKind simd;
};

UnpackFormat FormatOf(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
      return {UnpackQ8_0, QK8_0, 34, false, QUnpackKind::kQ8_0};
    case GgmlType::Q4_0:
      return {UnpackQ4_0, QK4_0, 18, false, QUnpackKind::kQ4_0};
    case GgmlType::Q4_1:
      return {UnpackQ4_1, QK4_1, 20, true, QUnpackKind::kQ4_1};
    case GgmlType::Q4_K:
      return {UnpackQ4_K, QK_K, 144, true, QUnpackKind::kOther};
    case GgmlType::Q6_K:
      return {UnpackQ6_K, QK_K, 210, false, QUnpackKind::kOther};
    default:
      throw Error(code::kUnsupportedTensorType, std::string("no quantized dot for tensor type ") + TypeName(type));
  }
}

QdotIsa DetectIsa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("f16c")) return QdotIsa::kScalar;
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
    return AmxUsable() ? QdotIsa::kAmx : QdotIsa::kAvx512Vnni;
  return QdotIsa::kAvx2;
#endif
  return QdotIsa::kScalar;
}

}  // namespace

bool HasQuantizedDot(GgmlType type) {
  switch (type) {
    case GgmlType::Q8_0:
    case GgmlType::Q4_0:
    case GgmlType::Q4_1:
    case GgmlType::Q4_K:
    case GgmlType::Q6_K:
      return true;
    default:
      return false;
  }
}

void QuantizedActivations::Resize(int64_t tokens, int64_t k) {
  if (k % kQBlock != 0)
    throw Error(code::kInvalidArgument, "activation length " + std::to_string(k) + " is not a multiple of 32");
  n_tokens = tokens;
  n_blocks = k / kQBlock;
  q.resize(static_cast<size_t>(n_tokens * n_blocks * kQBlock));
  d.resize(static_cast<size_t>(n_tokens * n_blocks));
  s.resize(static_cast<size_t>(n_tokens * n_blocks));
  sum.resize(static_cast<size_t>(n_tokens * n_blocks));
}

// ggml's quantize_row_q8_1, rounding half to even as its AVX2 version does (_mm256_round_ps), with the
// values clamped so that non-finite activations cannot leave [-127, 127].
void QuantizedActivations::Quantize(const float* x, int64_t begin, int64_t end, QdotIsa isa) {
  if (!QdotIsaSupported(isa)) throw Error(code::kInvalidArgument, std::string("CPU lacks ") + QdotIsaName(isa));
  if (isa != QdotIsa::kScalar) {
    const int64_t first = begin * n_blocks;
    QQuantizeAvx2(x + first * kQBlock, (end - begin) * n_blocks, q.data() + first * kQBlock, d.data() + first,
                  s.data() + first, sum.data() + first);
    return;
  }
  for (int64_t i = begin * n_blocks; i < end * n_blocks; ++i) {
    const float* xb = x + i * kQBlock;
    float amax = 0;
    for (int64_t j = 0; j < kQBlock; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float dd = amax / 127.0f;
    const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
    int8_t* qb = q.data() + i * kQBlock;
    int sum = 0;
    for (int64_t j = 0; j < kQBlock; ++j) {
      float v = xb[j] * id;
      // Clamped first (NaN to -127), then rounded to nearest even by the 1.5 * 2^23 trick, which needs
      // |v| < 2^22 and, unlike nearbyint, inlines without SSE4.1.
      if (!(v >= -127.0f)) v = -127.0f;
      if (!(v <= 127.0f)) v = 127.0f;
      v = (v + 12582912.0f) - 12582912.0f;
      qb[j] = static_cast<int8_t>(v);
      sum += qb[j];
    }
    d[static_cast<size_t>(i)] = ViaHalf(dd);
    s[static_cast<size_t>(i)] = ViaHalf(static_cast<float>(sum) * dd);
    this->sum[static_cast<size_t>(i)] = sum;
  }
}

void UnpackedRows::Unpack(GgmlType type, const uint8_t* first, uint64_t row_bytes, int n_rows, int64_t k, QdotIsa isa) {
  const UnpackFormat f = FormatOf(type);
  if (k % f.elems != 0 || n_rows < 1 || n_rows > kQTileRows)
    throw Error(code::kInvalidArgument, "cannot unpack " + std::to_string(n_rows) + " rows of " + std::to_string(k) +
                                            " " + TypeName(type) + " elements");
  rows = n_rows;
  n_blocks = k / kQBlock;
  with_min = f.with_min;
  const size_t blocks = static_cast<size_t>(rows * n_blocks);
  if (q.size() < blocks * kQBlock) q.resize(blocks * kQBlock);
  if (scale.size() < blocks * 8) scale.resize(blocks * 8);
  if (min.size() < blocks) min.resize(blocks);
  if (!QdotIsaSupported(isa)) throw Error(code::kInvalidArgument, std::string("CPU lacks ") + QdotIsaName(isa));
  if (isa != QdotIsa::kScalar &&
      QUnpackAvx2(f.simd, first, row_bytes, rows, n_blocks, q.data(), scale.data(), min.data()))
    return;
  const int64_t sub = f.elems / kQBlock;  // 32-element blocks per type block
  for (int r = 0; r < rows; ++r) {
    const uint8_t* src = first + static_cast<uint64_t>(r) * row_bytes;
    for (int64_t b = 0; b < k / f.elems; ++b) {
      const int64_t o = r * n_blocks + b * sub;
      f.fn(src + b * f.bytes, q.data() + o * kQBlock, scale.data() + o * 8, min.data() + o);
    }
  }
}

void QTileScalar(const QTileView& v) {
  const int64_t nb = v.n_blocks;
  for (int64_t t = 0; t < v.n_tokens; ++t) {
    for (int r = 0; r < v.rows; ++r) {
      float acc[8] = {};
      float summ = 0;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t rb = r * nb + b, tb = t * nb + b;
        const int8_t* w = v.wq + rb * kQBlock;
        const int8_t* x = v.xq + tb * kQBlock;
        const float* sc = v.wscale + rb * 8;
        const float xd = v.xd[tb];
        for (int l = 0; l < 8; ++l) {
          int32_t sum = 0;
          for (int j = 4 * l; j < 4 * l + 4; ++j) sum += static_cast<int32_t>(w[j]) * static_cast<int32_t>(x[j]);
          acc[l] = acc[l] + (sc[l] * xd) * static_cast<float>(sum);
        }
        if (v.with_min) summ = summ + v.wmin[rb] * v.xs[tb];
      }
      v.y[t * v.y_stride + r] =
          (((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))) + summ;
    }
  }
}

QdotIsa BestQdotIsa() {
  static const QdotIsa best = [] {
    QdotIsa isa = DetectIsa();
    // KVF_ENGINE_ISA=scalar|avx2|avx512vnni caps the choice, to run the fallbacks on a bigger CPU.
    if (const char* cap = std::getenv("KVF_ENGINE_ISA")) {
      for (QdotIsa c : {QdotIsa::kScalar, QdotIsa::kAvx2, QdotIsa::kAvx512Vnni})
        if (std::strcmp(cap, QdotIsaName(c)) == 0 && static_cast<int>(c) < static_cast<int>(isa)) isa = c;
    }
    return isa;
  }();
  return best;
}

bool QdotIsaSupported(QdotIsa isa) { return static_cast<int>(isa) <= static_cast<int>(BestQdotIsa()); }

const char* QdotIsaName(QdotIsa isa) {
  switch (isa) {
    case QdotIsa::kScalar:
      return "scalar";
    case QdotIsa::kAvx2:
      return "avx2";
    case QdotIsa::kAvx512Vnni:
      return "avx512vnni";
    case QdotIsa::kAmx:
      return "amx";
  }
  return "?";
}

void QuantizedTileDots(const UnpackedRows& w, const QuantizedActivations& x, float* y, int64_t y_stride, QdotIsa isa) {
  if (w.n_blocks != x.n_blocks)
    throw Error(code::kInvalidArgument, "weight rows of " + std::to_string(w.n_blocks) +
                                            " blocks against activations of " + std::to_string(x.n_blocks));
  if (!QdotIsaSupported(isa)) throw Error(code::kInvalidArgument, std::string("CPU lacks ") + QdotIsaName(isa));
  const QTileView v{w.rows,     w.n_blocks, w.with_min, w.q.data(), w.scale.data(), w.min.data(), x.n_tokens,
                    x.q.data(), x.d.data(), x.s.data(), y,          y_stride};
  switch (isa) {
    case QdotIsa::kAmx:  // AMX serves the packed types only (packed.h)
    case QdotIsa::kAvx512Vnni:
      QTileAvx512Vnni(v);
      return;
    case QdotIsa::kAvx2:
      QTileAvx2(v);
      return;
    case QdotIsa::kScalar:
      QTileScalar(v);
      return;
  }
}

}  // namespace kvf::engine
