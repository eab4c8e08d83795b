// Transfer descriptors as JS passes them: a Float64Array of five numbers per descriptor (localRegion,
// localOffset, remoteRegion, remoteOffset, length; src/fabric/native.ts). The only place where they are
// checked as numbers: the core takes kvf::Descriptor, 64-bit integers.
#pragma once

#include <napi.h>

#include <vector>

#include "core/transfer.h"

namespace kvf {

// Reads `value` (a Float64Array) into `out`, reusing its storage. Throws KVF_ERR_INVALID_ARGUMENT unless every
// field is an integer from 0 to 2^53 - 1 (what a double holds exactly), naming the first bad descriptor.
void ReadDescriptors(Napi::Env env, const Napi::Value& value, std::vector<Descriptor>* out);

}  // namespace kvf
