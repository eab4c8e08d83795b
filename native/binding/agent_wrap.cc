#include "binding/agent_wrap.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "binding/agent_options.h"
#include "binding/descriptors.h"
#include "binding/js_error.h"
#include "binding/js_number.h"
#include "binding/records.h"
#include "core/error_codes.h"

namespace kvf {

namespace {

uint32_t IdArgument(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + " must be a number");
  }
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 4294967295.0 || d != static_cast<double>(static_cast<uint32_t>(d))) {
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + " must be a 32-bit unsigned integer");
  }
  return static_cast<uint32_t>(d);
}

// Accepts any ArrayBufferView over an ArrayBuffer or SharedArrayBuffer (TS passes a Uint8Array).
struct View {
  uint8_t* data = nullptr;
  size_t length = 0;
  Napi::Value buffer;
};

View ViewArgument(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray()) ThrowCoded(env, code::kInvalidArgument, std::string(what) + " must be a Uint8Array");
  napi_typedarray_type type;
  size_t length = 0;
  void* data = nullptr;
  napi_value buffer;
  size_t offset = 0;
  NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset), View{});
  if (type != napi_uint8_array) ThrowCoded(env, code::kInvalidArgument, std::string(what) + " must be a Uint8Array");
  return View{static_cast<uint8_t*>(data), length, Napi::Value(env, buffer)};
}

bool IsDetached(const Napi::Value& buffer) {
  return buffer.IsArrayBuffer() && buffer.As<Napi::ArrayBuffer>().IsDetached();
}

}  // namespace

Napi::Function AgentWrap::Init(Napi::Env env) {
  return DefineClass(env, "NativeAgent",
                     {
                         InstanceMethod<&AgentWrap::Info>("info"),
                         InstanceMethod<&AgentWrap::RegisterMemory>("registerMemory"),
                         InstanceMethod<&AgentWrap::RegisterDevice>("registerDevice"),
                         InstanceMethod<&AgentWrap::DeregisterMemory>("deregisterMemory"),
                         InstanceMethod<&AgentWrap::Regions>("regions"),
                         InstanceMethod<&AgentWrap::AddPeer>("addPeer"),
                         InstanceMethod<&AgentWrap::RemovePeer>("removePeer"),
                         InstanceMethod<&AgentWrap::Post>("post"),
                         InstanceMethod<&AgentWrap::Prepare>("prepare"),
                         InstanceMethod<&AgentWrap::PostPrepared>("postPrepared"),
                         InstanceMethod<&AgentWrap::ReleasePrepared>("releasePrepared"),
                         InstanceMethod<&AgentWrap::Warmup>("warmup"),
                         InstanceMethod<&AgentWrap::Grant>("grant"),
                         InstanceMethod<&AgentWrap::Revoke>("revoke"),
                         InstanceMethod<&AgentWrap::LiveGrants>("liveGrants"),
                         InstanceMethod<&AgentWrap::AddGrant>("addGrant"),
                         InstanceMethod<&AgentWrap::RemoveGrant>("removeGrant"),
                         InstanceMethod<&AgentWrap::Notify>("notify"),
                         InstanceMethod<&AgentWrap::Close>("close"),
                         InstanceMethod<&AgentWrap::CloseSync>("closeSync"),
                         InstanceMethod<&AgentWrap::Reap>("reap"),
                         InstanceMethod<&AgentWrap::Ref>("ref"),
                         InstanceMethod<&AgentWrap::Unref>("unref"),
                     });
}

AgentWrap::AgentWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AgentWrap>(info), env_(info.Env()) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsFunction() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array ||
      info[2].As<Napi::Float64Array>().ElementLength() < kRecordHeaderSize + kRecordFields) {
    ThrowCoded(env, code::kInvalidArgument, "new NativeAgent(options, onEvents, records: Float64Array)");
  }
  const AgentOptions options = AgentOptionsFrom(info[0].As<Napi::Object>());
  // The core has joined its threads and closed every endpoint when kClosed is delivered: the pinned memory is
  // free to go.
  channel_ = std::make_unique<CompletionChannel>(env, info[2].As<Napi::Float64Array>(), info[1].As<Napi::Function>(),
                                                 [this] { pinned_.clear(); });
  try {
    agent_ = std::make_unique<Agent>(options, *channel_);
  } catch (const Error& e) {
    channel_->Close();
    Rethrow(env, e);
  }
  // Runs when a worker thread's environment goes away with the agent still open.
  napi_add_env_cleanup_hook(env, reinterpret_cast<void (*)(void*)>(&AgentWrap::CleanupHook), this);
  hook_added_ = true;
}

AgentWrap::~AgentWrap() {
  if (hook_added_) {
    napi_remove_env_cleanup_hook(env_, reinterpret_cast<void (*)(void*)>(&AgentWrap::CleanupHook), this);
    hook_added_ = false;
  }
  ReleaseAll();
}

void AgentWrap::CleanupHook(AgentWrap* self) {
  self->hook_added_ = false;
  self->ReleaseAll();
}

// Closes the core synchronously (threads joined, endpoints closed) and only then lets go of the JS memory
// the provider could have touched.
void AgentWrap::ReleaseAll() {
  if (agent_) agent_->CloseNow();
  if (channel_) channel_->Close();
  pinned_.clear();
}

Agent& AgentWrap::CoreOrThrow(Napi::Env env) {
  if (!agent_ || agent_->closing()) ThrowCoded(env, code::kClosed, "agent is closed");
  return *agent_;
}

Napi::Value AgentWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", a.name());
  o.Set("provider", a.provider());
  o.Set("fabric", a.fabric_name());
  const auto& rails = a.rails();
  Napi::Array domains = Napi::Array::New(env, rails.size());
  Napi::Array addresses = Napi::Array::New(env, rails.size());
  for (size_t i = 0; i < rails.size(); ++i) {
    domains.Set(static_cast<uint32_t>(i), a.domain_names()[i]);
    const auto& addr = rails[i]->address();
    addresses.Set(static_cast<uint32_t>(i), Napi::Buffer<uint8_t>::Copy(env, addr.data(), addr.size()));
  }
  o.Set("domains", domains);
  o.Set("addresses", addresses);
  o.Set("virtAddr", rails[0]->virt_addr());
  o.Set("hmem", a.hmem());
  o.Set("mrMode", static_cast<double>(rails[0]->info()->domain_attr->mr_mode));
  const TableLocation table = a.table_location();
  if (table.fd >= 0) {
    Napi::Object t = Napi::Object::New(env);
    t.Set("fd", table.fd);
    t.Set("inode", Napi::BigInt::New(env, table.inode));
    t.Set("nonce", Napi::Buffer<uint8_t>::Copy(env, table.nonce.data(), table.nonce.size()));
    o.Set("regionTable", t);
  }
  o.Set("txDepth", static_cast<double>(rails[0]->tx_depth()));
  o.Set("maxMessageSize", static_cast<double>(rails[0]->max_msg_size()));
  o.Set("maxNotificationBytes", static_cast<double>(kMaxNotificationBytes));
  o.Set("expressMaxBytes", static_cast<double>(a.express_max_bytes()));  // 0: no express lane (shm, or turned off)
  return o;
}

Napi::Value AgentWrap::RegisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  if (info.Length() < 1) ThrowCoded(env, code::kInvalidArgument, "registerMemory(view)");
  View view = ViewArgument(env, info[0], "memory");
  if (IsDetached(view.buffer)) ThrowCoded(env, code::kDetached, "cannot register a detached ArrayBuffer");
  if (view.length == 0) ThrowCoded(env, code::kZeroLength, "cannot register an empty buffer");
  uint32_t id;
  try {
    const bool remote_access = info.Length() < 2 || !info[1].IsBoolean() || info[1].As<Napi::Boolean>().Value();
    id = a.RegisterMemory(view.data, view.length, remote_access);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  Pinned& p = pinned_[id];
  p.view = Napi::Persistent(info[0]);
  p.buffer = Napi::Persistent(view.buffer);
  p.detachable = view.buffer.IsArrayBuffer();
  return Napi::Number::New(env, id);
}

// registerDevice(memory: bigint device address | Uint8Array standing in, length, cudaDevice, remoteAccess)
//   -> { id, base: bigint, keys: bigint[] }: device memory registered with every rail through FI_HMEM.
Napi::Value AgentWrap::RegisterDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  if (info.Length() < 4 || !info[1].IsNumber() || !info[2].IsNumber() || !info[3].IsBoolean())
    ThrowCoded(env, code::kInvalidArgument, "registerDevice(memory, length, cudaDevice, remoteAccess)");
  HmemTarget target;
  void* data = nullptr;
  const double length = info[1].As<Napi::Number>().DoubleValue();
  if (!(length > 0) || length > kMaxSafeInteger || length != static_cast<double>(static_cast<uint64_t>(length)))
    ThrowCoded(env, code::kInvalidArgument, "registerDevice: length must be a positive integer");
  if (info[0].IsBigInt()) {
    bool lossless = true;
    data = reinterpret_cast<void*>(static_cast<uintptr_t>(info[0].As<Napi::BigInt>().Uint64Value(&lossless)));
    if (!lossless || data == nullptr) ThrowCoded(env, code::kInvalidArgument, "registerDevice: bad device address");
    target.iface = FI_HMEM_CUDA;
    target.device = info[2].As<Napi::Number>().Int32Value();
  } else {
    View view = ViewArgument(env, info[0], "memory");
    if (view.length < static_cast<size_t>(length))
      ThrowCoded(env, code::kOutOfRange, "registerDevice: length runs past the memory");
    data = view.data;
  }
  uint32_t id;
  try {
    id = a.RegisterDeviceMemory(data, static_cast<size_t>(length), target, info[3].As<Napi::Boolean>().Value());
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  if (!info[0].IsBigInt()) pinned_[id].view = Napi::Persistent(info[0]);
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", id);
  out.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(data))));
  Napi::Array keys = Napi::Array::New(env);
  for (const Region* r : a.ListRegions()) {
    if (r->id != id) continue;
    for (size_t k = 0; k < r->mrs.size(); ++k)
      keys.Set(static_cast<uint32_t>(k), Napi::BigInt::New(env, r->mrs[k].key));
  }
  out.Set("keys", keys);
  return out;
}

Napi::Value AgentWrap::DeregisterMemory(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  uint32_t id = IdArgument(info, 0, "region id");
  try {
    a.DeregisterMemory(id);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  pinned_.erase(id);
  return env.Undefined();
}

Napi::Value AgentWrap::Regions(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  std::vector<const Region*> regions = a.ListRegions();
  Napi::Array out = Napi::Array::New(env, regions.size());
  for (size_t i = 0; i < regions.size(); ++i) {
    const Region* r = regions[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", r->id);
    o.Set("length", static_cast<double>(r->length));
    o.Set("base", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(r->data))));
    Napi::Array keys = Napi::Array::New(env, r->mrs.size());
    for (size_t k = 0; k < r->mrs.size(); ++k)
      keys.Set(static_cast<uint32_t>(k), Napi::BigInt::New(env, r->mrs[k].key));
    o.Set("keys", keys);
    if (r->share.valid()) {
      Napi::Object share = Napi::Object::New(env);
      share.Set("fd", r->share.fd);
      share.Set("inode", Napi::BigInt::New(env, r->share.inode));
      share.Set("offset", static_cast<double>(r->share.offset));
      o.Set("share", share);
    }
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

// addPeer(name, virtAddr, addresses: Uint8Array[], regions: {id, length, base: bigint, keys: bigint[]}[])
Napi::Value AgentWrap::AddPeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  if (info.Length() < 4 || !info[0].IsString() || !info[1].IsBoolean() || !info[2].IsArray() || !info[3].IsArray()) {
    ThrowCoded(env, code::kInvalidArgument, "addPeer(name, virtAddr, addresses, regions, cmaPid?)");
  }
  PeerOptions options;
  options.virt_addr = info[1].As<Napi::Boolean>();
  if (info.Length() > 4 && info[4].IsObject()) {
    // { pid, fastPath, table?: { fd, inode: bigint, nonce: Uint8Array(16) } }: the peer says it is on this host.
    Napi::Object host = info[4].As<Napi::Object>();
    Napi::Value pid = host.Get("pid"), fast = host.Get("fastPath"), table = host.Get("table");
    if (!pid.IsNumber() || !fast.IsBoolean())
      ThrowCoded(env, code::kInvalidArgument, "addPeer host needs { pid, fastPath }");
    options.host_pid = static_cast<pid_t>(pid.As<Napi::Number>().Int32Value());
    options.fast_path = fast.As<Napi::Boolean>().Value();
    if (table.IsObject()) {
      Napi::Object t = table.As<Napi::Object>();
      Napi::Value fd = t.Get("fd"), inode = t.Get("inode");
      if (!fd.IsNumber() || !inode.IsBigInt())
        ThrowCoded(env, code::kBadMetadata, "region table location has malformed fields");
      View nonce = ViewArgument(env, t.Get("nonce"), "table nonce");
      if (nonce.length != options.table.nonce.size())
        ThrowCoded(env, code::kBadMetadata, "region table nonce must be 16 bytes");
      bool lossless = true;
      options.table.fd = fd.As<Napi::Number>().Int32Value();
      options.table.inode = inode.As<Napi::BigInt>().Uint64Value(&lossless);
      std::memcpy(options.table.nonce.data(), nonce.data, nonce.length);
    }
  }
  std::vector<std::vector<uint8_t>> addresses;
  Napi::Array addrs = info[2].As<Napi::Array>();
  for (uint32_t i = 0; i < addrs.Length(); ++i) {
    View v = ViewArgument(env, addrs.Get(i), "address");
    addresses.emplace_back(v.data, v.data + v.length);
  }
  std::map<uint32_t, RemoteRegion> regions;
  Napi::Array list = info[3].As<Napi::Array>();
  for (uint32_t i = 0; i < list.Length(); ++i) {
    Napi::Value item = list.Get(i);
    if (!item.IsObject()) ThrowCoded(env, code::kBadMetadata, "region entry is not an object");
    Napi::Object r = item.As<Napi::Object>();
    Napi::Value id = r.Get("id"), length = r.Get("length"), base = r.Get("base"), keys = r.Get("keys");
    if (!id.IsNumber() || !length.IsNumber() || !base.IsBigInt() || !keys.IsArray()) {
      ThrowCoded(env, code::kBadMetadata, "region entry has malformed fields");
    }
    RemoteRegion rr;
    bool lossless = true;
    rr.base = base.As<Napi::BigInt>().Uint64Value(&lossless);
    rr.length = static_cast<uint64_t>(length.As<Napi::Number>().DoubleValue());
    Napi::Array karr = keys.As<Napi::Array>();
    for (uint32_t k = 0; k < karr.Length(); ++k) {
      Napi::Value key = karr.Get(k);
      if (!key.IsBigInt()) ThrowCoded(env, code::kBadMetadata, "region key is not a bigint");
      rr.keys.push_back(key.As<Napi::BigInt>().Uint64Value(&lossless));
    }
    rr.device = r.Get("device").IsBoolean() && r.Get("device").As<Napi::Boolean>().Value();
    Napi::Value share = r.Get("share");
    if (share.IsObject()) {
      Napi::Object sh = share.As<Napi::Object>();
      Napi::Value fd = sh.Get("fd"), inode = sh.Get("inode"), offset = sh.Get("offset");
      if (!fd.IsNumber() || !inode.IsBigInt() || !offset.IsNumber())
        ThrowCoded(env, code::kBadMetadata, "region share has malformed fields");
      rr.share.fd = fd.As<Napi::Number>().Int32Value();
      rr.share.inode = inode.As<Napi::BigInt>().Uint64Value(&lossless);
      rr.share.offset = static_cast<uint64_t>(offset.As<Napi::Number>().DoubleValue());
    }
    regions[id.As<Napi::Number>().Uint32Value()] = std::move(rr);
  }
  try {
    const uint32_t id = a.AddPeer(info[0].As<Napi::String>().Utf8Value(), options, addresses, std::move(regions));
    const Peer& peer = a.PeerById(id);
    Napi::Object out = Napi::Object::New(env);
    out.Set("id", id);
    out.Set("path", peer.cma_pid != 0 ? "cma" : "fabric");
    if (!peer.cma_refused.empty()) out.Set("fastPathRefused", peer.cma_refused);
    if (!peer.map_refused.empty()) out.Set("mapRefused", peer.map_refused);
    if (options.host_pid > 0 && !peer.table) out.Set("tableRefused", peer.table_refused);
    size_t mapped = 0;
    for (const auto& [rid, region] : peer.regions) mapped += region.mapping ? 1 : 0;
    out.Set("mappedRegions", static_cast<double>(mapped));
    return out;
  } catch (const Error& e) {
    Rethrow(env, e);
  }
}

Napi::Value AgentWrap::RemovePeer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  try {
    a.RemovePeer(IdArgument(info, 0, "peer id"));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

// post(kind: 0 write | 1 read, peerId, descriptors: Float64Array (5 per descriptor), notification?: Uint8Array)
Napi::Value AgentWrap::Post(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t kind = IdArgument(info, 0, "kind");
  const uint32_t peer = IdArgument(info, 1, "peer id");
  if (kind > 1) ThrowCoded(env, code::kInvalidArgument, "kind must be 0 (write) or 1 (read)");
  ReadDescriptors(env, info[2], &descriptors_);
  const size_t count = descriptors_.size();
  std::vector<uint32_t> regions;
  regions.reserve(count);
  for (const Descriptor& d : descriptors_) {
    if (d.local_region <= UINT32_MAX)
      regions.push_back(static_cast<uint32_t>(d.local_region));  // the core reports others
  }
  CheckDetached(env, regions);
  const bool has_notification = info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull();
  View note;
  if (has_notification) note = ViewArgument(env, info[3], "notification");
  return Posted(env, [&] {
    return a.PostTransfer(kind == 0 ? OpKind::kWrite : OpKind::kRead, peer, descriptors_.data(), count, note.data,
                          note.length, has_notification);
  });
}

void AgentWrap::CheckDetached(Napi::Env env, const std::vector<uint32_t>& regions) {
  // A registered ArrayBuffer that was detached since (transferred to a worker, say) must not be written.
  uint32_t last = 0;
  for (uint32_t region : regions) {
    if (region == last) continue;
    last = region;
    auto it = pinned_.find(region);
    if (it != pinned_.end() && it->second.detachable && IsDetached(it->second.buffer.Value())) {
      ThrowCoded(env, code::kDetached, "the ArrayBuffer of region " + std::to_string(region) + " has been detached");
    }
  }
}

// prepare(peerId, descriptors: Float64Array) → list id
Napi::Value AgentWrap::Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t peer = IdArgument(info, 0, "peer id");
  ReadDescriptors(env, info[1], &descriptors_);
  try {
    return Napi::Number::New(env, a.Prepare(peer, descriptors_.data(), descriptors_.size()));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
}

// postPrepared(kind, listId, indices?: Uint32Array, notification?: Uint8Array) → transfer id
Napi::Value AgentWrap::PostPrepared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t kind = IdArgument(info, 0, "kind");
  const uint32_t list = IdArgument(info, 1, "prepared list id");
  if (kind > 1) ThrowCoded(env, code::kInvalidArgument, "kind must be 0 (write) or 1 (read)");
  const uint32_t* indices = nullptr;
  size_t count = 0;
  if (info.Length() > 2 && !info[2].IsUndefined() && !info[2].IsNull()) {
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
      ThrowCoded(env, code::kInvalidArgument, "indices must be a Uint32Array");
    }
    Napi::Uint32Array idx = info[2].As<Napi::Uint32Array>();
    indices = idx.Data();
    count = idx.ElementLength();
  }
  const bool has_notification = info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull();
  View note;
  if (has_notification) note = ViewArgument(env, info[3], "notification");
  return Posted(env, [&] {
    std::vector<uint32_t> regions;
    for (const auto& [id, region] : a.PreparedOrThrow(list).regions) regions.push_back(id);
    CheckDetached(env, regions);
    return a.PostPrepared(kind == 0 ? OpKind::kWrite : OpKind::kRead, list, indices, count, note.data, note.length,
                          has_notification);
  });
}

Napi::Value AgentWrap::ReleasePrepared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  try {
    a.ReleasePrepared(IdArgument(info, 0, "prepared list id"));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

Napi::Value AgentWrap::Warmup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t peer = IdArgument(info, 0, "peer id");
  return Posted(env, [&] { return a.Warmup(peer); });
}

Napi::Value AgentWrap::Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t peer = IdArgument(info, 0, "peer id");
  if (info.Length() < 2) ThrowCoded(env, code::kInvalidArgument, "notify(peer, data)");
  View v = ViewArgument(env, info[1], "notification");
  return Posted(env, [&] { return a.PostNotification(peer, v.data, v.length); });
}

Napi::Value AgentWrap::Close(const Napi::CallbackInfo& info) {
  uint32_t timeout = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : 10000;
  if (agent_) agent_->BeginClose(timeout);
  return info.Env().Undefined();
}

Napi::Value AgentWrap::CloseSync(const Napi::CallbackInfo& info) {
  ReleaseAll();
  return info.Env().Undefined();
}

// reap(spinUs) → transfers the caller may spin for still in flight (express ops, and small transfers on the
// rail threads). Completes what the express lanes have finished, polling for up to spinUs while such work is
// in flight and nothing has completed, and when that made events (here, on a rail thread meanwhile, or in a
// post call before) delivers them now, on this call's stack, rather than on a later turn of the loop.
// Completions of large transfers keep arriving asynchronously.
Napi::Value AgentWrap::Reap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!agent_ || agent_->closed()) return Napi::Number::New(env, 0);
  const double spin_us = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
  return Napi::Number::New(env, static_cast<double>(channel_->Reap(env, *agent_, spin_us)));
}

Napi::Value AgentWrap::Ref(const Napi::CallbackInfo& info) {
  if (channel_) channel_->Ref(info.Env());
  return info.Env().Undefined();
}

Napi::Value AgentWrap::Unref(const Napi::CallbackInfo& info) {
  if (channel_) channel_->Unref(info.Env());
  return info.Env().Undefined();
}

}  // namespace kvf
