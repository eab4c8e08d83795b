// CompletionChannel: the one way a finished transfer (or a notification, or the agent's close) reaches JS.
//
// The core pushes every event into it from whichever thread produced it. Delivery has one entry, Deliver(),
// which hands JS one batch: successful transfers as records in the buffer JS allocated (records.h), every
// other event as an object. Three things may call it, all on the JS thread:
//   - the thread-safe function, when a thread other than a collecting owner call pushed (the default);
//   - Reap(), which the event loop calls while transfers are in flight (src/fabric/completion-poller.ts):
//     it completes the express lanes, may spin briefly for a small transfer, and delivers on its own stack;
//   - a post call's AfterPost(), which only writes the records (JS does not know the new id yet, so it reads
//     them when the call returns) and flags events that need a Deliver(), which JS then asks for at once.
// Pushes made inside an owner call (OwnerCall) or while Reap() spins wake nobody: that caller collects them.
#pragma once

#include <napi.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <vector>

#include "core/agent.h"
#include "core/event_sink.h"

namespace kvf {

class CompletionChannel final : public EventSink {
 public:
  // `records`: the Float64Array JS reads (at least one record long); `on_events(batch, records)`: the TS
  // handler, held weakly (the TS wrapper owns it); `on_closed` runs on the JS thread when the kClosed event is
  // delivered (the core has joined its threads and closed its endpoints).
  CompletionChannel(Napi::Env env, Napi::Float64Array records, Napi::Function on_events,
                    std::function<void()> on_closed);
  ~CompletionChannel() override;

  void Push(Event event) override;
  bool OwnerSpinning() const override { return spinning_.load(std::memory_order_relaxed); }

  // A call on the owner (JS) thread that collects what it completes itself. Leaving it with pushed events
  // still uncollected (the call threw) wakes the loop for them.
  class OwnerCall {
   public:
    explicit OwnerCall(CompletionChannel& channel);
    ~OwnerCall();
    OwnerCall(const OwnerCall&) = delete;
    OwnerCall& operator=(const OwnerCall&) = delete;

   private:
    CompletionChannel& channel_;
    const CompletionChannel* outer_;
  };

  // After a post (inside its OwnerCall): rewrites the records with what completed during the call.
  void AfterPost();
  // reap(spinUs): see the file comment and src/fabric/native.ts. Returns the transfers still worth polling for.
  size_t Reap(Napi::Env env, Agent& agent, double spin_us);
  // Whether the thread-safe function keeps the event loop alive (TS refs it while transfers are in flight).
  void Ref(Napi::Env env);
  void Unref(Napi::Env env);
  // No more deliveries: drops what is queued and lets go of every JS reference. The agent must be closed first.
  void Close();

 private:
  // Shared with the thread-safe function, which may run a queued call after the channel is gone.
  struct Context {
    CompletionChannel* channel = nullptr;
  };
  static void CallJs(Napi::Env env, Napi::Function, Context* context, void*);
  using Tsfn = Napi::TypedThreadSafeFunction<Context, void, &CompletionChannel::CallJs>;

  void Wake();
  void Deliver(Napi::Env env);
  std::vector<Event> Take();
  void SetSpinning(bool spinning);
  // Writes successful transfers into the records buffer if they all fit; false (nothing written) otherwise.
  bool WriteRecords(const std::vector<Event>& events);

  Context* context_;
  Tsfn tsfn_;
  bool released_ = false;
  std::atomic<bool> wake_pending_{false};
  Napi::FunctionReference on_events_;
  std::function<void()> on_closed_;
  Napi::Reference<Napi::Value> records_ref_;
  double* records_ = nullptr;    // written only on the JS thread
  size_t records_capacity_ = 0;  // transfers

  std::mutex mu_;
  std::vector<Event> events_;
  std::atomic<bool> unwoken_{false};   // pushed without a wake since the last collection
  std::atomic<bool> spinning_{false};  // written under mu_ (Push decides under it)
  // Events a post call took but could not put into the records (failures, notifications, too many): delivered
  // by the next Deliver, which JS asks for at once (header: eventsWaiting).
  std::vector<Event> held_;
};

}  // namespace kvf
