// The addon's GPU functions (cudaStatus, cudaAllocate, cudaFree, cudaCopyToDevice, cudaCopyFromDevice,
// cudaCheckRange, libfabricHmem): free functions over native/core/cuda.h.
#pragma once

#include <napi.h>

namespace kvf {

void InitCuda(Napi::Env env, Napi::Object exports);

}  // namespace kvf
