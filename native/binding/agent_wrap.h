// NativeAgent: the Node-API face of kvf::Agent. Arguments are checked here, JS buffers are pinned here, and
// completions reach JS through the agent's CompletionChannel.
#pragma once

#include <napi.h>

#include <map>
#include <memory>
#include <vector>

#include "binding/completion_channel.h"
#include "binding/js_error.h"
#include "core/agent.h"

namespace kvf {

class AgentWrap : public Napi::ObjectWrap<AgentWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AgentWrap(const Napi::CallbackInfo& info);
  ~AgentWrap() override;

 private:
  struct Pinned {
    Napi::Reference<Napi::Value> view;    // keeps the memory alive while registered
    Napi::Reference<Napi::Value> buffer;  // the ArrayBuffer, to detect detachment
    bool detachable = false;
  };

  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info);
  Napi::Value RegisterDevice(const Napi::CallbackInfo& info);
  Napi::Value DeregisterMemory(const Napi::CallbackInfo& info);
  Napi::Value Regions(const Napi::CallbackInfo& info);
  Napi::Value AddPeer(const Napi::CallbackInfo& info);
  Napi::Value RemovePeer(const Napi::CallbackInfo& info);
  Napi::Value Post(const Napi::CallbackInfo& info);
  Napi::Value Prepare(const Napi::CallbackInfo& info);
  Napi::Value PostPrepared(const Napi::CallbackInfo& info);
  Napi::Value ReleasePrepared(const Napi::CallbackInfo& info);
  Napi::Value Warmup(const Napi::CallbackInfo& info);
  // grant_wrap.cc
  Napi::Value Grant(const Napi::CallbackInfo& info);
  Napi::Value Revoke(const Napi::CallbackInfo& info);
  Napi::Value LiveGrants(const Napi::CallbackInfo& info);
  Napi::Value AddGrant(const Napi::CallbackInfo& info);
  Napi::Value RemoveGrant(const Napi::CallbackInfo& info);
  // Throws KVF_ERR_DETACHED when a registered ArrayBuffer among `regions` was detached since.
  void CheckDetached(Napi::Env env, const std::vector<uint32_t>& regions);
  Napi::Value Notify(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value CloseSync(const Napi::CallbackInfo& info);
  Napi::Value Reap(const Napi::CallbackInfo& info);
  Napi::Value Ref(const Napi::CallbackInfo& info);
  Napi::Value Unref(const Napi::CallbackInfo& info);

  Agent& CoreOrThrow(Napi::Env env);
  // Runs a post on the core inside an owner call, then has the channel write what completed meanwhile into the
  // records (JS reads them when the call returns: it did not know the new transfer's id before).
  template <typename PostFn>
  Napi::Value Posted(Napi::Env env, PostFn&& post) {
    CompletionChannel::OwnerCall call(*channel_);
    try {
      const uint64_t id = post();
      channel_->AfterPost();
      return Napi::Number::New(env, static_cast<double>(id));
    } catch (const Error& e) {
      Rethrow(env, e);
    }
  }
  void ReleaseAll();
  static void CleanupHook(AgentWrap* self);

  std::unique_ptr<CompletionChannel> channel_;  // declared first: the agent pushes into it until it is closed
  std::unique_ptr<Agent> agent_;
  std::map<uint32_t, Pinned> pinned_;
  std::vector<Descriptor> descriptors_;  // the last post's or prepare's, converted (storage reused)
  napi_env env_ = nullptr;
  bool hook_added_ = false;
};

}  // namespace kvf
