#include "binding/completion_channel.h"

#include <algorithm>
#include <chrono>

#include "binding/js_error.h"
#include "binding/records.h"

namespace kvf {

namespace {

// The channel whose OwnerCall this thread is inside, if any: its pushes from this thread are collected by that
// call, so waking the event loop for them would only cost a syscall and an empty delivery.
thread_local const CompletionChannel* t_collecting = nullptr;

// reap() spins for small rail-thread transfers only while this few are in flight: with more, the spinning JS
// thread takes a core from the rails and the peer, and completions come in batches anyway (design.md).
constexpr size_t kSpinAwaitedMax = 1;
// The longest one reap() may spin, whatever JS asks.
constexpr double kMaxSpinUs = 1e4;

Napi::Object EventObject(Napi::Env env, Event& ev) {
  Napi::Object o = Napi::Object::New(env);
  switch (ev.type) {
    case Event::Type::kTransferDone:  // a failed one (successes go into the records)
      o.Set("type", "failed");
      o.Set("id", static_cast<double>(ev.transfer_id));
      o.Set("error", ErrorObject(env, ev.error));
      break;
    case Event::Type::kNotification:
      o.Set("type", "notification");
      o.Set("from", ev.from);
      o.Set("data", Napi::Buffer<uint8_t>::Copy(env, ev.data.data(), ev.data.size()));
      break;
    case Event::Type::kClosed:
      o.Set("type", "closed");
      break;
  }
  return o;
}

}  // namespace

CompletionChannel::CompletionChannel(Napi::Env env, Napi::Float64Array records, Napi::Function on_events,
                                     std::function<void()> on_closed)
    : context_(new Context{this}),
      on_events_(Napi::Weak(on_events)),
      on_closed_(std::move(on_closed)),
      records_ref_(Napi::Persistent(static_cast<Napi::Value>(records))),
      records_(records.Data()),
      records_capacity_((records.ElementLength() - kRecordHeaderSize) / kRecordFields) {
  tsfn_ = Tsfn::New(env, "kvfabric.completions", 0, 1, context_, [](Napi::Env, void*, Context* c) { delete c; });
  tsfn_.Unref(env);  // TS refs it while transfers are in flight, so idle agents never hold the loop open
}

CompletionChannel::~CompletionChannel() { Close(); }

void CompletionChannel::Close() {
  if (released_) return;
  released_ = true;
  context_->channel = nullptr;
  tsfn_.Release();  // the finalizer frees the context once queued calls have drained
  held_.clear();
  records_ = nullptr;
  if (!records_ref_.IsEmpty()) records_ref_.Reset();
}

void CompletionChannel::Push(Event event) {
  bool wake;
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(event));
    wake = t_collecting != this && !spinning_;
    if (!wake) unwoken_ = true;
  }
  if (wake) Wake();
}

void CompletionChannel::Wake() {
  if (!wake_pending_.exchange(true)) tsfn_.NonBlockingCall();
}

std::vector<Event> CompletionChannel::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Event> out;
  out.swap(events_);
  return out;
}

void CompletionChannel::SetSpinning(bool spinning) {
  std::lock_guard<std::mutex> lock(mu_);  // clearing it under the lock: a push meanwhile is marked unwoken
  spinning_ = spinning;
}

CompletionChannel::OwnerCall::OwnerCall(CompletionChannel& channel) : channel_(channel), outer_(t_collecting) {
  t_collecting = &channel;
}

CompletionChannel::OwnerCall::~OwnerCall() {
  t_collecting = outer_;
  if (outer_ != &channel_ && channel_.unwoken_.exchange(false)) channel_.Wake();
}

void CompletionChannel::CallJs(Napi::Env env, Napi::Function, Context* context, void*) {
  if (env == nullptr || context == nullptr || context->channel == nullptr) return;
  CompletionChannel* channel = context->channel;
  channel->wake_pending_ = false;  // before draining, so an event pushed meanwhile schedules another call
  // Nothing may unwind out of here into libuv. The TS handler never throws (it re-throws user listener
  // errors on a later tick); what remains is an environment that is shutting down (a terminated worker,
  // process teardown), where JS can no longer run and the events have nobody left to receive them.
  try {
    channel->Deliver(env);
  } catch (...) {
  }
}

bool CompletionChannel::WriteRecords(const std::vector<Event>& events) {
  if (events.size() > records_capacity_ || !std::all_of(events.begin(), events.end(), Succeeded)) return false;
  for (size_t i = 0; i < events.size(); ++i) WriteRecord(events[i], records_ + kRecordHeaderSize + i * kRecordFields);
  records_[kHeadCount] = static_cast<double>(events.size());
  return true;
}

void CompletionChannel::AfterPost() {
  if (records_ == nullptr) return;
  records_[kHeadCount] = 0;
  records_[kHeadEventsWaiting] = held_.empty() ? 0 : 1;
  if (!unwoken_.exchange(false)) return;
  std::vector<Event> events = Take();
  if (held_.empty() && WriteRecords(events)) return;
  for (Event& e : events) held_.push_back(std::move(e));
  records_[kHeadEventsWaiting] = 1;
}

size_t CompletionChannel::Reap(Napi::Env env, Agent& agent, double spin_us) {
  OwnerCall call(*this);
  size_t left = agent.ReapExpress();
  const auto awaited = [&agent] {
    const size_t n = agent.awaited_in_flight();
    return n <= kSpinAwaitedMax ? n : 0;
  };
  if ((left > 0 || awaited() > 0) && spin_us > 0 && !unwoken_) {
    // Spinning here, not turn by turn of the loop: a completion is seen within a CQ read of its arrival (a
    // loop turn costs an epoll_wait and more, a wake from a rail thread a futex and a loop turn), and the loop
    // still turns at least every spinUs.
    const auto deadline = std::chrono::steady_clock::now() +
                          std::chrono::nanoseconds(static_cast<int64_t>(std::min(spin_us, kMaxSpinUs) * 1e3));
    SetSpinning(true);
    while ((left > 0 || awaited() > 0) && !unwoken_ && std::chrono::steady_clock::now() < deadline) {
      if (left > 0) left = agent.ReapExpress();
    }
    SetSpinning(false);
  }
  if (unwoken_.exchange(false) || !held_.empty()) Deliver(env);
  return left + awaited();
}

void CompletionChannel::Deliver(Napi::Env env) {
  Napi::HandleScope scope(env);
  std::vector<Event> events = std::move(held_);
  held_.clear();
  for (Event& e : Take()) events.push_back(std::move(e));
  if (events.empty() || records_ == nullptr) return;
  // A batch larger than the shared buffer gets an array of its own.
  const size_t ndone = static_cast<size_t>(std::count_if(events.begin(), events.end(), Succeeded));
  Napi::Value records = records_ref_.Value();
  double* out = records_;
  if (ndone > records_capacity_) {
    Napi::Float64Array big = Napi::Float64Array::New(env, kRecordHeaderSize + ndone * kRecordFields);
    records = big;
    out = big.Data();
  }
  out[kHeadCount] = static_cast<double>(ndone);
  out[kHeadEventsWaiting] = 0;
  Napi::Value batch = env.Undefined();
  if (ndone < events.size()) batch = Napi::Array::New(env, events.size() - ndone);
  bool closed = false;
  size_t d = 0;
  uint32_t b = 0;
  for (Event& e : events) {
    closed = closed || e.type == Event::Type::kClosed;
    if (Succeeded(e)) {
      WriteRecord(e, out + kRecordHeaderSize + d++ * kRecordFields);
    } else {
      batch.As<Napi::Array>().Set(b++, EventObject(env, e));
    }
  }
  if (closed && on_closed_) on_closed_();
  Napi::Value fn = on_events_.Value();
  if (fn.IsFunction()) fn.As<Napi::Function>().Call({batch, records});
}

void CompletionChannel::Ref(Napi::Env env) {
  if (!released_) tsfn_.Ref(env);
}

void CompletionChannel::Unref(Napi::Env env) {
  if (!released_) tsfn_.Unref(env);
}

}  // namespace kvf
