#include "binding/descriptors.h"

#include <cmath>
#include <string>

#include "binding/js_error.h"
#include "binding/js_number.h"
#include "core/error_codes.h"

namespace kvf {

namespace {

constexpr size_t kFields = 5;
static_assert(sizeof(Descriptor) == kFields * sizeof(uint64_t), "Descriptor is the five fields, in JS order");

uint64_t ExactInteger(Napi::Env env, double v, size_t descriptor, const char* field) {
  if (!(v >= 0) || v > kMaxSafeInteger || std::floor(v) != v) {
    ThrowCoded(
        env, code::kInvalidArgument,
        "descriptor " + std::to_string(descriptor) + ": " + field + " must be a non-negative integer below 2^53");
  }
  return static_cast<uint64_t>(v);
}

}  // namespace

void ReadDescriptors(Napi::Env env, const Napi::Value& value, std::vector<Descriptor>* out) {
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    ThrowCoded(env, code::kInvalidArgument, "descriptors must be a Float64Array");
  }
  Napi::Float64Array array = value.As<Napi::Float64Array>();
  if (array.ElementLength() % kFields != 0) {
    ThrowCoded(env, code::kInvalidArgument, "descriptor array length must be a multiple of 5");
  }
  const size_t count = array.ElementLength() / kFields;
  const double* f = array.Data();
  out->resize(count);
  for (size_t i = 0; i < count; ++i, f += kFields) {
    Descriptor& d = (*out)[i];
    d.local_region = ExactInteger(env, f[0], i, "localRegion");
    d.local_offset = ExactInteger(env, f[1], i, "localOffset");
    d.remote_region = ExactInteger(env, f[2], i, "remoteRegion");
    d.remote_offset = ExactInteger(env, f[3], i, "remoteOffset");
    d.length = ExactInteger(env, f[4], i, "length");
  }
}

}  // namespace kvf
