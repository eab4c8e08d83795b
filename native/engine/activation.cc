// SwiGLU's element-wise part, gate[i] = silu(gate[i]) * up[i], with exp from attention_kernels.h's ExpNeg (a fixed
// polynomial, not libm's expf) so that the loop vectorises; every clone performs the same operations in the same
// order (-ffp-contract=off, CMakeLists.txt), so the result does not depend on which one the CPU picks.
#include "engine/activation.h"

#include "engine/attention_kernels.h"

namespace kvf::engine {

// silu(g) = g * sigmoid(g), sigmoid through e = exp(-|g|) <= 1: 1 / (1 + e) for g >= 0, e / (1 + e) below.
#pragma GCC push_options
#pragma GCC optimize("tree-vectorize")
__attribute__((target_clones("avx512f", "avx2", "default"))) void SiluMul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float e = ExpNeg(g >= 0.0f ? -g : g);
    const float s = (g >= 0.0f ? 1.0f : e) / (1.0f + e);
    gate[i] = g * s * up[i];
  }
}
#pragma GCC pop_options

}  // namespace kvf::engine
