// NativeEngine: the reference Llama engine over a KV pool in JS-visible (typically fabric-registered) memory.
// Forward passes and batched steps run on a libuv worker (AsyncWorker), one at a time per engine (TS batches
// concurrent calls into one step), so the
// event loop stays free while the model computes.
#pragma once

#include <napi.h>

#include <memory>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/session.h"

namespace kvf {

// Where a batched step's wall time went: the model's own compute on the worker thread, and the hand-off around
// it (waiting for a libuv pool thread after Queue(), then for the event loop to run OnOK after Execute returned).
struct StepTimes {
  double compute_seconds = 0;
  double hand_off_seconds = 0;
};

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit EngineWrap(const Napi::CallbackInfo& info);

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Allocate(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value Claim(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value Step(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  Napi::Value LastStepTimes(const Napi::CallbackInfo& info);

  engine::Session& SessionOrThrow(Napi::Env env);

  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::KvPool> pool_;
  std::unique_ptr<engine::Session> session_;
  Napi::Reference<Napi::Value> memory_;  // the pool's bytes stay alive as long as the engine
  bool busy_ = false;
  StepTimes last_step_;  // written on the event loop thread when a step's result arrives
};

}  // namespace kvf
