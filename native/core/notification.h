// Notification messages: sent with fi_send on rail 0, received into pre-posted buffers. They come from the
// network, so decoding checks every length. Layout (little-endian): "KVFN", u8 version, u8 sender-name
// length, u16 reserved, u32 payload length, sender name, payload.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kvf {

constexpr size_t kMaxNotificationBytes = 16384;
constexpr size_t kMaxNameBytes = 255;
constexpr size_t kNotificationHeader = 12;
constexpr size_t kNotificationMessageMax = kNotificationHeader + kMaxNameBytes + kMaxNotificationBytes;

// Throws KVF_ERR_TOO_LARGE above kMaxNotificationBytes.
std::vector<uint8_t> EncodeNotification(const std::string& from, const uint8_t* data, size_t length);
// False for anything malformed.
bool DecodeNotification(const uint8_t* data, size_t length, std::string* from, std::vector<uint8_t>* payload);

}  // namespace kvf
