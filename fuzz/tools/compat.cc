// Definitions that jazzer.js 4.0.0's prebuilt fuzzer addon takes from glibc 2.38 / libstdc++ 13, for hosts
// with older ones (Debian bookworm: glibc 2.36, GCC 12). tools/jazzer-compat.mjs unbinds the addon's
// references from those versions, and run.mjs preloads this library to satisfy them.
#include <cstdlib>
#include <iostream>  // with GCC 12, this TU's static std::ios_base::Init sets up the standard streams

// C23 variants: they differ from the C99 ones only in parsing "0b" prefixes, which libFuzzer's flags never use.
extern "C" long __isoc23_strtol(const char* s, char** end, int base) { return std::strtol(s, end, base); }
extern "C" unsigned long __isoc23_strtoul(const char* s, char** end, int base) { return std::strtoul(s, end, base); }

// GCC 13 headers reference this so that the library's own stream initialisation is linked; GCC 12's
// libstdc++ does that per translation unit instead (above).
namespace std {
void ios_base_library_init() {}
}  // namespace std
