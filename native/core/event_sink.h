// Where an agent's events go: every finished transfer, received notification and the final kClosed, pushed
// by whichever thread produced it (a rail thread, a copier thread, the closer thread, or the owner thread
// while it posts or reaps). The core only pushes; whether and how the owner is woken is the sink's business
// (the binding's CompletionChannel, native/binding/completion_channel.h).
#pragma once

#include "core/transfer.h"

namespace kvf {

class EventSink {
 public:
  virtual ~EventSink() = default;
  virtual void Push(Event event) = 0;
  // Whether the owner thread is spinning for completions right now (read on rail threads, relaxed): busy-polling
  // rails then yield between polls, so that spinners sharing a core alternate.
  virtual bool OwnerSpinning() const = 0;
};

}  // namespace kvf
