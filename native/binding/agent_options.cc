#include "binding/agent_options.h"

#include <string>

#include "binding/js_error.h"
#include "binding/js_number.h"
#include "core/error_codes.h"

namespace kvf {

namespace {

std::string StringOption(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return {};
  if (!v.IsString()) ThrowCoded(o.Env(), code::kInvalidArgument, std::string("option '") + key + "' must be a string");
  return v.As<Napi::String>().Utf8Value();
}

// An integer option from 0 to `max`; `fallback` when absent.
uint64_t IntegerOption(const Napi::Object& o, const char* key, double max, uint64_t fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
  if (!(d >= 0) || d > max || d != static_cast<double>(static_cast<uint64_t>(d))) {
    ThrowCoded(o.Env(), code::kInvalidArgument,
               std::string("option '") + key + "' must be an integer from 0 to " + std::to_string(uint64_t(max)));
  }
  return static_cast<uint64_t>(d);
}

}  // namespace

AgentOptions AgentOptionsFrom(const Napi::Object& o) {
  AgentOptions options;
  options.name = StringOption(o, "name");
  options.provider = StringOption(o, "provider");
  options.node = StringOption(o, "node");
  options.domain = StringOption(o, "domain");
  options.rails = static_cast<uint32_t>(IntegerOption(o, "rails", kMaxRails, options.rails));
  options.stripe_threshold = IntegerOption(o, "stripeThreshold", kMaxSafeInteger, options.stripe_threshold);
  options.express_max_bytes = IntegerOption(o, "expressMaxBytes", kMaxSafeInteger, options.express_max_bytes);
  options.busy_poll_us = static_cast<uint32_t>(IntegerOption(o, "busyPollUs", kMaxBusyPollUs, options.busy_poll_us));
  Napi::Value hmem = o.Get("hmem");
  if (!hmem.IsUndefined() && !hmem.IsBoolean())
    ThrowCoded(o.Env(), code::kInvalidArgument, "option 'hmem' must be a boolean");
  options.hmem = hmem.IsBoolean() && hmem.As<Napi::Boolean>().Value();
  return options;
}

}  // namespace kvf
