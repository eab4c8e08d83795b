// Turns core errors into JS Errors with the stable `code` (plus `errno` and `providerMessage` for
// libfabric failures) that src/common/errors.ts maps onto KvfError.
#pragma once

#include <napi.h>

#include "core/error.h"

namespace kvf {

inline Napi::Object ErrorObject(Napi::Env env, const ErrorInfo& info) {
  Napi::Error err = Napi::Error::New(env, info.message);
  Napi::Object obj = err.Value();
  obj.Set("code", info.code);
  if (info.fi_errno != 0) obj.Set("errno", info.fi_errno);
  if (!info.provider_message.empty()) obj.Set("providerMessage", info.provider_message);
  return obj;
}

[[noreturn]] inline void ThrowCoded(Napi::Env env, const std::string& code, const std::string& message) {
  throw Napi::Error(env, ErrorObject(env, ErrorInfo{code, message, 0, {}}));
}

[[noreturn]] inline void Rethrow(Napi::Env env, const Error& e) { throw Napi::Error(env, ErrorObject(env, e.info())); }

}  // namespace kvf
