// NativeAgent: the Node-API face of kvf::Agent. Arguments are checked here, JS buffers are pinned here,
// and completions arrive on the JS thread in batches through one thread-safe function per agent.
#pragma once

#include <napi.h>

#include <atomic>
#include <map>
#include <memory>
#include <vector>

#include "core/agent.h"

namespace kvf {

class AgentWrap : public Napi::ObjectWrap<AgentWrap> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit AgentWrap(const Napi::CallbackInfo& info);
  ~AgentWrap() override;

 private:
  // Shared with the thread-safe function, which may deliver a queued call after this wrap is gone.
  struct Sink {
    AgentWrap* wrap = nullptr;
    std::atomic<bool> pending{false};
  };
  static void CallJs(Napi::Env env, Napi::Function, Sink* sink, void*);
  using Tsfn = Napi::TypedThreadSafeFunction<Sink, void, &AgentWrap::CallJs>;

  struct Pinned {
    Napi::Reference<Napi::Value> view;    // keeps the memory alive while registered
    Napi::Reference<Napi::Value> buffer;  // the ArrayBuffer, to detect detachment
    bool detachable = false;
  };

  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value RegisterMemory(const Napi::CallbackInfo& info);
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
  void Deliver(Napi::Env env);
  // After a post: completions the post call itself produced go into the records (see records_), without a
  // call into JS, which does not know the new transfer's id yet.
  void CollectAfterPost();
  // Writes successful transfers into the records buffer if they all fit; false (nothing written) otherwise.
  bool WriteRecords(const std::vector<Event>& events, double* out, size_t capacity);
  void ReleaseAll();
  static void CleanupHook(AgentWrap* self);

  std::unique_ptr<Agent> agent_;
  Sink* sink_ = nullptr;
  Tsfn tsfn_;
  bool tsfn_released_ = false;
  Napi::FunctionReference on_events_;  // weak: the TS wrapper owns the function
  std::map<uint32_t, Pinned> pinned_;
  std::vector<Descriptor> descriptors_;  // the last post's or prepare's, converted (storage reused)
  // The records buffer JS allocated once and reads after every post and delivery (src/fabric/native.ts:
  // RECORDS_*): a header, then DONE fields per successful transfer. Written only on the JS thread.
  Napi::Reference<Napi::Value> records_ref_;
  double* records_ = nullptr;
  size_t records_capacity_ = 0;  // transfers
  // Events a post call took but could not put into the records (failures, notifications, too many):
  // delivered by the next Deliver, which JS asks for at once (records header: events waiting).
  std::vector<Event> held_;
  napi_env env_ = nullptr;
  bool hook_added_ = false;
};

}  // namespace kvf
