// Element-wise activations of the forward pass.
#pragma once

#include <cstdint>

namespace kvf::engine {

// gate[i] = silu(gate[i]) * up[i] for i < n (SwiGLU).
void SiluMul(float* gate, const float* up, int64_t n);

}  // namespace kvf::engine
