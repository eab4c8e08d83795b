#include "core/notification.h"

#include <cstring>

#include "core/error.h"
#include "core/error_codes.h"

namespace kvf {

namespace {
constexpr uint8_t kMagic[4] = {'K', 'V', 'F', 'N'};
constexpr uint8_t kVersion = 1;
}  // namespace

std::vector<uint8_t> EncodeNotification(const std::string& from, const uint8_t* data, size_t length) {
  if (length > kMaxNotificationBytes) {
    throw Error(code::kTooLarge, "notification is " + std::to_string(length) + " bytes; the limit is " +
                                     std::to_string(kMaxNotificationBytes));
  }
  std::vector<uint8_t> msg(kNotificationHeader + from.size() + length);
  std::memcpy(msg.data(), kMagic, 4);
  msg[4] = kVersion;
  msg[5] = static_cast<uint8_t>(from.size());
  msg[6] = msg[7] = 0;
  const uint32_t len32 = static_cast<uint32_t>(length);
  std::memcpy(msg.data() + 8, &len32, 4);
  std::memcpy(msg.data() + kNotificationHeader, from.data(), from.size());
  if (length > 0) std::memcpy(msg.data() + kNotificationHeader + from.size(), data, length);
  return msg;
}

bool DecodeNotification(const uint8_t* data, size_t length, std::string* from, std::vector<uint8_t>* payload) {
  if (length < kNotificationHeader || std::memcmp(data, kMagic, 4) != 0 || data[4] != kVersion) return false;
  const size_t name_len = data[5];
  uint32_t payload_len;
  std::memcpy(&payload_len, data + 8, 4);
  if (name_len == 0 || kNotificationHeader + name_len + payload_len != length) return false;
  from->assign(reinterpret_cast<const char*>(data + kNotificationHeader), name_len);
  payload->assign(data + kNotificationHeader + name_len, data + length);
  return true;
}

}  // namespace kvf
