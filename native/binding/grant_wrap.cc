// The grant half of NativeAgent (core/agent_grants.cc): grant, revoke and liveGrants on the owner's side,
// addGrant and removeGrant on the reader's. Serialising grants is TypeScript's job (src/fabric/grants.ts);
// what arrives here was parsed there and is checked again where it matters (key count, access, range).
#include <string>

#include "binding/agent_wrap.h"
#include "binding/js_error.h"
#include "binding/js_number.h"
#include "core/error_codes.h"

namespace kvf {

namespace {

double NumberArgument(const Napi::CallbackInfo& info, size_t i, const char* what, double max) {
  if (info.Length() <= i || !info[i].IsNumber())
    ThrowCoded(info.Env(), code::kInvalidArgument, std::string(what) + " must be a number");
  const double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > max || d != static_cast<double>(static_cast<uint64_t>(d))) {
    ThrowCoded(info.Env(), code::kInvalidArgument,
               std::string(what) + " must be an integer in 0.." + std::to_string(max));
  }
  return d;
}

constexpr double kMaxU32 = 4294967295.0;

uint64_t BigIntField(Napi::Env env, const Napi::Value& v, const char* what) {
  bool lossless = false;
  if (!v.IsBigInt()) ThrowCoded(env, code::kBadMetadata, std::string("grant ") + what + " is not a bigint");
  const uint64_t out = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) ThrowCoded(env, code::kBadMetadata, std::string("grant ") + what + " is not a u64");
  return out;
}

}  // namespace

// grant(region, offset, length, write: boolean) -> { id, slot, base: bigint, keys: bigint[], share? }
Napi::Value AgentWrap::Grant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t region = static_cast<uint32_t>(NumberArgument(info, 0, "region id", kMaxU32));
  const uint64_t offset = static_cast<uint64_t>(NumberArgument(info, 1, "offset", kMaxSafeInteger));
  const uint64_t length = static_cast<uint64_t>(NumberArgument(info, 2, "length", kMaxSafeInteger));
  if (info.Length() < 4 || !info[3].IsBoolean())
    ThrowCoded(env, code::kInvalidArgument, "grant(region, offset, length, write)");
  GrantInfo g;
  try {
    g = a.Grant(region, offset, length, info[3].As<Napi::Boolean>().Value() ? kAccessWrite : kAccessRead);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", g.id);
  o.Set("slot", g.slot);
  o.Set("base", Napi::BigInt::New(env, g.base));
  Napi::Array keys = Napi::Array::New(env, g.keys.size());
  for (size_t k = 0; k < g.keys.size(); ++k) keys.Set(static_cast<uint32_t>(k), Napi::BigInt::New(env, g.keys[k]));
  o.Set("keys", keys);
  if (g.share.valid()) {
    Napi::Object share = Napi::Object::New(env);
    share.Set("fd", g.share.fd);
    share.Set("inode", Napi::BigInt::New(env, g.share.inode));
    share.Set("offset", static_cast<double>(g.share.offset));
    o.Set("share", share);
  }
  return o;
}

// revoke(id) -> whether it was live. Works while the agent closes (grants must be revocable until the end).
Napi::Value AgentWrap::Revoke(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint32_t id = static_cast<uint32_t>(NumberArgument(info, 0, "grant id", kMaxU32));
  if (!agent_ || agent_->closed()) return Napi::Boolean::New(env, false);
  return Napi::Boolean::New(env, agent_->Revoke(id));
}

Napi::Value AgentWrap::LiveGrants(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), agent_ ? static_cast<double>(agent_->live_grants()) : 0);
}

// addGrant(peer, { id, base: bigint, length, access: 1 | 2, keys: bigint[], share?: { fd, inode, offset } })
Napi::Value AgentWrap::AddGrant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t peer = static_cast<uint32_t>(NumberArgument(info, 0, "peer id", kMaxU32));
  if (info.Length() < 2 || !info[1].IsObject()) ThrowCoded(env, code::kInvalidArgument, "addGrant(peer, grant)");
  Napi::Object g = info[1].As<Napi::Object>();
  Napi::Value id = g.Get("id"), length = g.Get("length"), access = g.Get("access"), keys = g.Get("keys"),
              share = g.Get("share");
  if (!id.IsNumber() || !length.IsNumber() || !access.IsNumber() || !keys.IsArray()) {
    ThrowCoded(env, code::kBadMetadata, "grant has malformed fields");
  }
  RemoteRegion rr;
  rr.base = BigIntField(env, g.Get("base"), "base");
  const double len = length.As<Napi::Number>().DoubleValue();
  if (!(len >= 1) || len > kMaxSafeInteger) ThrowCoded(env, code::kBadMetadata, "grant length must be 1..2^53-1");
  rr.length = static_cast<uint64_t>(len);
  if (rr.base + rr.length < rr.base)
    ThrowCoded(env, code::kBadMetadata, "grant wraps past the end of the address space");
  rr.access = access.As<Napi::Number>().Uint32Value();
  Napi::Array karr = keys.As<Napi::Array>();
  for (uint32_t k = 0; k < karr.Length(); ++k) rr.keys.push_back(BigIntField(env, karr.Get(k), "key"));
  if (share.IsObject()) {
    Napi::Object sh = share.As<Napi::Object>();
    Napi::Value fd = sh.Get("fd"), offset = sh.Get("offset");
    if (!fd.IsNumber() || !offset.IsNumber()) ThrowCoded(env, code::kBadMetadata, "grant share has malformed fields");
    rr.share.fd = fd.As<Napi::Number>().Int32Value();
    rr.share.inode = BigIntField(env, sh.Get("inode"), "share inode");
    rr.share.offset = static_cast<uint64_t>(offset.As<Napi::Number>().DoubleValue());
  }
  try {
    a.AddGrant(peer, id.As<Napi::Number>().Uint32Value(), std::move(rr));
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

Napi::Value AgentWrap::RemoveGrant(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Agent& a = CoreOrThrow(env);
  const uint32_t peer = static_cast<uint32_t>(NumberArgument(info, 0, "peer id", kMaxU32));
  const uint32_t id = static_cast<uint32_t>(NumberArgument(info, 1, "grant id", kMaxU32));
  try {
    a.RemoveGrant(peer, id);
  } catch (const Error& e) {
    Rethrow(env, e);
  }
  return env.Undefined();
}

}  // namespace kvf
