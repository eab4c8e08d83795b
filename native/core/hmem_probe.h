// What the loaded libfabric offers for device memory (FI_HMEM), for `kvfabric doctor` and `kvfabric info`.
#pragma once

#include <string>

namespace kvf {

struct HmemProbe {
  bool hmem = false;    // fi_getinfo found the provider with FI_HMEM among its capabilities
  std::string library;  // the file the libfabric entry points were loaded from (dladdr); empty if unknown
  std::string error;    // why fi_getinfo found none (fi_strerror), or why libfabric is missing
};

// Asks libfabric for an FI_EP_RDM endpoint of `provider` (e.g. "efa", "tcp;ofi_rxm") with FI_HMEM and RMA, and
// FI_MR_HMEM among the memory-registration modes. Never throws.
HmemProbe ProbeHmem(const std::string& provider);

}  // namespace kvf
