// Module entry: the NativeAgent class plus free functions that need no agent.
#include <napi.h>
#include <rdma/fabric.h>

#include "binding/agent_wrap.h"
#include "binding/cuda_wrap.h"
#include "binding/engine_wrap.h"
#include "binding/js_error.h"
#include "binding/js_number.h"
#include "binding/records.h"
#include "core/error_codes.h"
#include "core/host_memory.h"

namespace kvf {
namespace {

// allocate(length, hugepages, requireHugepages, shared) -> { buffer: ArrayBuffer, hugepages: boolean, shared: boolean }
Napi::Value Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowCoded(env, code::kInvalidArgument, "allocate(length)");
  double len = info[0].As<Napi::Number>().DoubleValue();
  if (!(len >= 0) || len > kMaxSafeInteger) ThrowCoded(env, code::kInvalidArgument, "invalid length");
  bool huge = info.Length() > 1 && info[1].ToBoolean();
  bool require = info.Length() > 2 && info[2].ToBoolean();
  Share share = Share::kNo;
  if (info.Length() > 3 && info[3].IsString() && info[3].As<Napi::String>().Utf8Value() == "auto") {
    share = Share::kAuto;
  } else if (info.Length() > 3 && info[3].ToBoolean()) {
    share = Share::kYes;
  }
  HostAllocation a;
  try {
    a = AllocateHost(static_cast<size_t>(len), huge, require, share);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  auto* hold = new HostAllocation(a);
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, a.data, a.length,
      [](Napi::Env, void*, HostAllocation* h) {
        FreeHost(*h);
        delete h;
      },
      hold);
  Napi::Object out = Napi::Object::New(env);
  out.Set("buffer", buffer);
  out.Set("hugepages", a.hugepages);
  out.Set("shared", a.fd >= 0);
  return out;
}

Napi::Value LibfabricVersion(const Napi::CallbackInfo& info) {
  uint32_t v = fi_version();
  return Napi::String::New(info.Env(), std::to_string(FI_MAJOR(v)) + "." + std::to_string(FI_MINOR(v)));
}

}  // namespace
}  // namespace kvf

static Napi::Object InitKvfabric(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeAgent", kvf::AgentWrap::Init(env));
  exports.Set("NativeEngine", kvf::EngineWrap::Init(env));
  exports.Set("allocate", Napi::Function::New(env, kvf::Allocate));
  exports.Set("libfabricVersion", Napi::Function::New(env, kvf::LibfabricVersion));
  exports.Set("recordLayout", kvf::RecordLayoutObject(env));
  kvf::InitCuda(env, exports);
  return exports;
}

NODE_API_MODULE(kvfabric, InitKvfabric)
