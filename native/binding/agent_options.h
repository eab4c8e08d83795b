// The NativeAgent constructor's options object, checked and turned into the core's AgentOptions.
#pragma once

#include <napi.h>

#include "core/agent.h"

namespace kvf {

AgentOptions AgentOptionsFrom(const Napi::Object& o);

}  // namespace kvf
