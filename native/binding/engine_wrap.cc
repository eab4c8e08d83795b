#include "binding/engine_wrap.h"

#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "binding/js_error.h"
#include "core/error_codes.h"

namespace kvf {

namespace {

std::vector<int32_t> Int32Vector(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
    ThrowCoded(env, code::kInvalidArgument, std::string(what) + " must be an Int32Array");
  }
  Napi::Int32Array a = v.As<Napi::Int32Array>();
  return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
}

// The logits handed to JS in place: the vector the step filled becomes the array's memory (freed when JS collects
// it), so a step's result costs no zero-filled allocation and copy of a vocabulary's floats on the event loop.
Napi::Float32Array AdoptFloats(Napi::Env env, std::vector<float>&& v) {
  auto* held = new std::vector<float>(std::move(v));
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(
      env, held->data(), held->size() * sizeof(float), [](Napi::Env, void*, std::vector<float>* h) { delete h; }, held);
  return Napi::Float32Array::New(env, held->size(), buffer, 0);
}

Napi::Int32Array ToInt32Array(Napi::Env env, const std::vector<int32_t>& v) {
  Napi::Int32Array out = Napi::Int32Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i];
  return out;
}

// Runs Prefill (several tokens) or Decode (one) off the event loop and resolves with the last logits.
class ForwardWorker : public Napi::AsyncWorker {
 public:
  ForwardWorker(Napi::Env env, engine::Session& session, bool* busy, std::vector<int32_t> tokens,
                std::vector<int32_t> table, int64_t start, Napi::Object keep_alive, Napi::Value cancel)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        session_(session),
        busy_(busy),
        tokens_(std::move(tokens)),
        table_(std::move(table)),
        start_(start),
        keep_alive_(Napi::Persistent(keep_alive)) {
    // The cancel word lives in a JS Int32Array; the reference keeps its memory for the life of the pass.
    if (cancel.IsTypedArray()) {
      Napi::Int32Array word = cancel.As<Napi::Int32Array>();
      cancel_ = engine::CancelFlag(word.Data());
      cancel_ref_ = Napi::Persistent(word.As<Napi::Object>());
    }
  }

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      logits_ = tokens_.size() == 1 ? session_.Decode(tokens_[0], table_, start_, cancel_)
                                    : session_.Prefill(tokens_, table_, start_, cancel_);
    } catch (const Error& e) {
      error_ = e.info();
    } catch (const std::exception& e) {
      error_ = ErrorInfo{code::kInvalidArgument, e.what(), 0, {}};
    }
  }

  void OnOK() override {
    *busy_ = false;
    Napi::Env env = Env();
    if (!error_.ok()) {
      deferred_.Reject(ErrorObject(env, error_));
      return;
    }
    Napi::Float32Array out = Napi::Float32Array::New(env, logits_.size());
    std::copy(logits_.begin(), logits_.end(), out.Data());
    deferred_.Resolve(out);
  }

 private:
  Napi::Promise::Deferred deferred_;
  engine::Session& session_;
  bool* busy_;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> table_;
  int64_t start_;
  Napi::ObjectReference keep_alive_;  // the engine object, so it is not collected mid-computation
  engine::CancelFlag cancel_;
  Napi::ObjectReference cancel_ref_;
  std::vector<float> logits_;
  ErrorInfo error_;
};

// Runs one batched step (Session::Step) off the event loop; resolves with one entry per sequence: its logits
// (Float32Array), null when it asked for none, or the Error that dropped it (the others are unaffected).
class StepWorker : public Napi::AsyncWorker {
 public:
  struct Entry {
    std::vector<int32_t> tokens;
    std::vector<int32_t> table;
    int64_t start = 0;
    bool logits = true;
    engine::CancelFlag cancel;
  };

  StepWorker(Napi::Env env, engine::Session& session, bool* busy, StepTimes* times, std::vector<Entry> entries,
             Napi::Object keep_alive, Napi::Array cancel_words)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        session_(session),
        busy_(busy),
        times_(times),
        queued_(Clock::now()),
        entries_(std::move(entries)),
        keep_alive_(Napi::Persistent(keep_alive)),
        cancel_refs_(Napi::Persistent(cancel_words.As<Napi::Object>())) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    started_ = Clock::now();
    std::vector<engine::SeqBatch> batch;
    batch.reserve(entries_.size());
    for (const Entry& e : entries_)
      batch.push_back({e.tokens.data(), static_cast<int64_t>(e.tokens.size()), &e.table, e.start, e.logits, e.cancel});
    try {
      results_ = session_.Step(batch);
    } catch (const Error& e) {
      error_ = e.info();
    } catch (const std::exception& e) {
      error_ = ErrorInfo{code::kInvalidArgument, e.what(), 0, {}};
    }
    finished_ = Clock::now();
  }

  void OnOK() override {
    *busy_ = false;
    const Clock::time_point now = Clock::now();
    times_->compute_seconds = Seconds(finished_ - started_);
    times_->hand_off_seconds = Seconds(started_ - queued_) + Seconds(now - finished_);
    Napi::Env env = Env();
    if (!error_.ok()) {
      deferred_.Reject(ErrorObject(env, error_));
      return;
    }
    Napi::Array out = Napi::Array::New(env, results_.size());
    for (size_t i = 0; i < results_.size(); ++i) {
      engine::SeqResult& r = results_[i];
      if (!r.error.ok()) {
        out.Set(static_cast<uint32_t>(i), ErrorObject(env, r.error));
      } else if (r.logits.empty()) {
        out.Set(static_cast<uint32_t>(i), env.Null());
      } else {
        out.Set(static_cast<uint32_t>(i), AdoptFloats(env, std::move(r.logits)));
      }
    }
    deferred_.Resolve(out);
  }

 private:
  using Clock = std::chrono::steady_clock;
  static double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

  Napi::Promise::Deferred deferred_;
  engine::Session& session_;
  bool* busy_;
  StepTimes* times_;  // the engine's; it outlives the step (keep_alive_)
  Clock::time_point queued_;
  Clock::time_point started_;
  Clock::time_point finished_;
  std::vector<Entry> entries_;
  Napi::ObjectReference keep_alive_;   // the engine object, so it is not collected mid-computation
  Napi::ObjectReference cancel_refs_;  // the entries' cancel words (JS Int32Arrays), alive for the step
  std::vector<engine::SeqResult> results_;
  ErrorInfo error_;
};

bool IsCancelWord(const Napi::Value& v) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array &&
         v.As<Napi::TypedArray>().ElementLength() >= 1;
}

}  // namespace

// NativeEngine.blockBytes(modelPath, tokensPerBlock, f32): the pool size a caller must provide per block.
static Napi::Value BlockBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsNumber()) {
    ThrowCoded(env, code::kInvalidArgument, "blockBytes(modelPath, tokensPerBlock, f32)");
  }
  try {
    auto model = engine::Model::Load(info[0].As<Napi::String>().Utf8Value());
    engine::KvLayout layout = engine::KvLayoutFor(*model, info[1].As<Napi::Number>().Int32Value(),
                                                  info[2].ToBoolean() ? engine::KvDtype::F32 : engine::KvDtype::F16);
    return Napi::Number::New(env, static_cast<double>(layout.block_bytes()));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
}

Napi::Function EngineWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeEngine",
                     {
                         StaticMethod<&BlockBytes>("blockBytes"),
                         InstanceMethod<&EngineWrap::Info>("info"),
                         InstanceMethod<&EngineWrap::LastStepTimes>("lastStepTimes"),
                         InstanceMethod<&EngineWrap::Allocate>("allocate"),
                         InstanceMethod<&EngineWrap::Free>("free"),
                         InstanceMethod<&EngineWrap::Claim>("claim"),
                         InstanceMethod<&EngineWrap::Forward>("forward"),
                         InstanceMethod<&EngineWrap::Step>("step"),
                         InstanceMethod<&EngineWrap::Close>("close"),
                     });
}

// new NativeEngine(modelPath, pool: Uint8Array, { tokensPerBlock, f32, threads })
EngineWrap::EngineWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<EngineWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsTypedArray() || !info[2].IsObject()) {
    ThrowCoded(env, code::kInvalidArgument, "new NativeEngine(modelPath, pool, options)");
  }
  Napi::TypedArray pool = info[1].As<Napi::TypedArray>();
  if (pool.TypedArrayType() != napi_uint8_array) ThrowCoded(env, code::kInvalidArgument, "pool must be a Uint8Array");
  Napi::Uint8Array bytes = pool.As<Napi::Uint8Array>();
  Napi::Object o = info[2].As<Napi::Object>();
  const int tokens_per_block =
      o.Get("tokensPerBlock").IsNumber() ? o.Get("tokensPerBlock").As<Napi::Number>().Int32Value() : 32;
  const bool f32 = o.Get("f32").ToBoolean();
  engine::SessionOptions session_options;
  if (o.Get("threads").IsNumber()) session_options.threads = o.Get("threads").As<Napi::Number>().Int32Value();
  try {
    model_ = engine::Model::Load(info[0].As<Napi::String>().Utf8Value());
    engine::KvLayout layout =
        engine::KvLayoutFor(*model_, tokens_per_block, f32 ? engine::KvDtype::F32 : engine::KvDtype::F16);
    pool_ = std::make_unique<engine::KvPool>(layout, bytes.Data(), bytes.ByteLength());
    session_ = std::make_unique<engine::Session>(*model_, *pool_, session_options);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  memory_ = Napi::Persistent(info[1]);
}

engine::Session& EngineWrap::SessionOrThrow(Napi::Env env) {
  if (!session_) ThrowCoded(env, code::kClosed, "engine is closed");
  return *session_;
}

Napi::Value EngineWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SessionOrThrow(env);
  const engine::LlamaHparams& hp = model_->hparams();
  const engine::KvLayout& layout = pool_->layout();
  Napi::Object o = Napi::Object::New(env);
  o.Set("layers", hp.n_layer);
  o.Set("embedding", hp.n_embd);
  o.Set("heads", hp.n_head);
  o.Set("kvHeads", hp.n_head_kv);
  o.Set("headDim", hp.head_dim);
  o.Set("vocab", hp.n_vocab);
  o.Set("contextLength", hp.n_ctx);
  o.Set("tokensPerBlock", layout.tokens_per_block);
  o.Set("dtype", layout.dtype == engine::KvDtype::F16 ? "f16" : "f32");
  o.Set("blockBytes", static_cast<double>(layout.block_bytes()));
  o.Set("sectionBytes", static_cast<double>(layout.section_bytes()));
  o.Set("numBlocks", static_cast<double>(pool_->num_blocks()));
  o.Set("freeBlocks", static_cast<double>(pool_->free_blocks()));
  o.Set("threads", session_->threads());
  // The worker thread writes the counters during a pass: NaN then rather than a racy read.
  const double nan = std::nan("");
  o.Set("matmulSeconds", busy_ ? nan : static_cast<double>(session_->timings().matmul_ns) * 1e-9);
  o.Set("attentionSeconds", busy_ ? nan : static_cast<double>(session_->timings().attention_ns) * 1e-9);
  return o;
}

// lastStepTimes() -> { computeSeconds, handOffSeconds } of the last batched step that ended (zeros before any).
Napi::Value EngineWrap::LastStepTimes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("computeSeconds", last_step_.compute_seconds);
  o.Set("handOffSeconds", last_step_.hand_off_seconds);
  return o;
}

Napi::Value EngineWrap::Allocate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SessionOrThrow(env);
  if (info.Length() < 1 || !info[0].IsNumber()) ThrowCoded(env, code::kInvalidArgument, "allocate(count)");
  try {
    return ToInt32Array(env, pool_->Allocate(info[0].As<Napi::Number>().Int64Value()));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
}

Napi::Value EngineWrap::Free(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SessionOrThrow(env);
  try {
    pool_->Free(Int32Vector(env, info.Length() > 0 ? info[0] : env.Undefined(), "blocks"));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

Napi::Value EngineWrap::Claim(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  SessionOrThrow(env);
  try {
    pool_->Claim(Int32Vector(env, info.Length() > 0 ? info[0] : env.Undefined(), "blocks"));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

// forward(tokens: Int32Array, table: Int32Array, startPos, cancel?: Int32Array) -> Promise<Float32Array> (logits
// of the last token); cancel[0] != 0 stops the pass at its next layer with KVF_ERR_CANCELLED.
Napi::Value EngineWrap::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  engine::Session& session = SessionOrThrow(env);
  if (busy_) ThrowCoded(env, code::kBusy, "a forward pass is already running on this engine");
  if (info.Length() < 3 || !info[2].IsNumber())
    ThrowCoded(env, code::kInvalidArgument, "forward(tokens, table, startPos)");
  std::vector<int32_t> tokens = Int32Vector(env, info[0], "tokens");
  if (tokens.empty()) ThrowCoded(env, code::kInvalidArgument, "forward needs at least one token");
  std::vector<int32_t> table = Int32Vector(env, info[1], "block table");
  Napi::Value cancel = info.Length() > 3 ? info[3] : env.Undefined();
  if (!cancel.IsUndefined() &&
      (!cancel.IsTypedArray() || cancel.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array ||
       cancel.As<Napi::TypedArray>().ElementLength() < 1)) {
    ThrowCoded(env, code::kInvalidArgument, "forward's cancel word must be an Int32Array of at least one element");
  }
  auto* worker = new ForwardWorker(env, session, &busy_, std::move(tokens), std::move(table),
                                   info[2].As<Napi::Number>().Int64Value(), info.This().As<Napi::Object>(), cancel);
  busy_ = true;
  worker->Queue();
  return worker->Promise();
}

// step([{ tokens: Int32Array, table: Int32Array, startPos, logits?: boolean, cancel?: Int32Array }]) ->
// Promise<Array<Float32Array | null | Error>>: one batched forward step over all the sequences (Session::Step).
Napi::Value EngineWrap::Step(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  engine::Session& session = SessionOrThrow(env);
  if (busy_) ThrowCoded(env, code::kBusy, "a forward pass is already running on this engine");
  if (info.Length() < 1 || !info[0].IsArray()) ThrowCoded(env, code::kInvalidArgument, "step(entries)");
  Napi::Array list = info[0].As<Napi::Array>();
  std::vector<StepWorker::Entry> entries(list.Length());
  Napi::Array words = Napi::Array::New(env);
  for (uint32_t i = 0; i < list.Length(); ++i) {
    Napi::Value v = list.Get(i);
    if (!v.IsObject()) ThrowCoded(env, code::kInvalidArgument, "each step entry must be an object");
    Napi::Object o = v.As<Napi::Object>();
    StepWorker::Entry& e = entries[i];
    e.tokens = Int32Vector(env, o.Get("tokens"), "tokens");
    e.table = Int32Vector(env, o.Get("table"), "block table");
    if (!o.Get("startPos").IsNumber()) ThrowCoded(env, code::kInvalidArgument, "a step entry needs startPos");
    e.start = o.Get("startPos").As<Napi::Number>().Int64Value();
    e.logits = o.Get("logits").IsUndefined() || o.Get("logits").ToBoolean();
    Napi::Value cancel = o.Get("cancel");
    if (cancel.IsUndefined()) continue;
    if (!IsCancelWord(cancel))
      ThrowCoded(env, code::kInvalidArgument, "a step entry's cancel word must be an Int32Array");
    // The word lives in a JS Int32Array; the reference held in `words` keeps its memory for the step.
    e.cancel = engine::CancelFlag(cancel.As<Napi::Int32Array>().Data());
    words.Set(words.Length(), cancel);
  }
  auto* worker =
      new StepWorker(env, session, &busy_, &last_step_, std::move(entries), info.This().As<Napi::Object>(), words);
  busy_ = true;
  worker->Queue();
  return worker->Promise();
}

Napi::Value EngineWrap::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (busy_) ThrowCoded(env, code::kBusy, "a forward pass is still running");
  session_.reset();
  pool_.reset();
  model_.reset();
  memory_.Reset();
  return env.Undefined();
}

}  // namespace kvf
