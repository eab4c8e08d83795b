// libFuzzer target: notification messages (native/core/notification.cc), the bytes a peer sends with
// fi_senddata into rail 0's pre-posted buffers. DecodeNotification must refuse anything malformed without
// reading past the message, and what it accepts must encode back to the same bytes (but for the reserved u16,
// which the decoder ignores).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/notification.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The receive buffers are kNotificationMessageMax bytes: a longer message never reaches the decoder.
  if (size > kvf::kNotificationMessageMax) return 0;
  // A copy of exactly `size` bytes, so that AddressSanitizer sees any read past the message.
  std::vector<uint8_t> message(data, data + size);
  std::string from;
  std::vector<uint8_t> payload;
  if (!kvf::DecodeNotification(message.data(), message.size(), &from, &payload)) return 0;
  std::vector<uint8_t> again = kvf::EncodeNotification(from, payload.data(), payload.size());
  message[6] = message[7] = 0;
  if (again != message) std::abort();
  return 0;
}
