// The completion records: how a successful transfer reaches JS as numbers in a Float64Array that JS allocates
// once (an object with named properties per completion cost more than a shm READ). This table is the only
// definition of the layout: the addon exports it (recordLayout) and src/fabric/records.ts takes every offset
// from there.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

#include "core/transfer.h"

namespace kvf {

// The buffer starts with a header...
enum RecordHeader : uint8_t {
  kHeadCount,          // records that follow
  kHeadEventsWaiting,  // 1 when a post call left events only a delivery can carry (JS then calls reap() at once)
  kRecordHeaderSize,
};
inline constexpr const char* kRecordHeaderNames[kRecordHeaderSize] = {"count", "eventsWaiting"};

// ...then one record of these fields per successful transfer.
enum RecordField : uint8_t {
  kRecId,
  kRecBytes,
  kRecDurationNs,
  kRecRailsLow,   // rails that carried ops: bits 0-31 of the mask (a double holds 53 bits, the mask 64)
  kRecRailsHigh,  // bits 32-63
  kRecPostNs,
  kRecProviderPostNs,
  kRecOps,
  kRecFlags,  // RecordFlag bits
  kRecordFields,
};
inline constexpr const char* kRecordFieldNames[kRecordFields] = {
    "id", "bytes", "durationNs", "railsLow", "railsHigh", "postNs", "providerPostNs", "ops", "flags",
};

enum RecordFlag : uint8_t { kFlagCma = 1, kFlagExpress = 2, kFlagMapped = 4 };
struct NamedFlag {
  const char* name;
  RecordFlag flag;
};
inline constexpr NamedFlag kRecordFlags[] = {{"cma", kFlagCma}, {"express", kFlagExpress}, {"mapped", kFlagMapped}};

inline bool Succeeded(const Event& e) { return e.type == Event::Type::kTransferDone && e.error.ok(); }

inline void WriteRecord(const Event& e, double* r) {
  r[kRecId] = static_cast<double>(e.transfer_id);
  r[kRecBytes] = static_cast<double>(e.bytes);
  r[kRecDurationNs] = static_cast<double>(e.duration_ns);
  r[kRecRailsLow] = static_cast<double>(e.rails_mask & 0xffffffffu);
  r[kRecRailsHigh] = static_cast<double>(e.rails_mask >> 32);
  r[kRecPostNs] = static_cast<double>(e.post_ns);
  r[kRecProviderPostNs] = static_cast<double>(e.provider_post_ns);
  r[kRecOps] = static_cast<double>(e.ops);
  const bool same_host = e.path != TransferPath::kFabric;
  r[kRecFlags] =
      (same_host ? kFlagCma : 0) | (e.express ? kFlagExpress : 0) | (e.path == TransferPath::kMapped ? kFlagMapped : 0);
}

// { headerSize, stride, header: {name: index}, fields: {name: offset}, flags: {name: bit} }
inline Napi::Object RecordLayoutObject(Napi::Env env) {
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("headerSize", static_cast<double>(kRecordHeaderSize));
  layout.Set("stride", static_cast<double>(kRecordFields));
  Napi::Object header = Napi::Object::New(env);
  for (size_t i = 0; i < kRecordHeaderSize; ++i) header.Set(kRecordHeaderNames[i], static_cast<double>(i));
  layout.Set("header", header);
  Napi::Object fields = Napi::Object::New(env);
  for (size_t i = 0; i < kRecordFields; ++i) fields.Set(kRecordFieldNames[i], static_cast<double>(i));
  layout.Set("fields", fields);
  Napi::Object flags = Napi::Object::New(env);
  for (const NamedFlag& f : kRecordFlags) flags.Set(f.name, static_cast<double>(f.flag));
  layout.Set("flags", flags);
  return layout;
}

}  // namespace kvf
