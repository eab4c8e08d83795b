// Unguessable numbers for access control: memory-region keys and the region table's nonce. They come from the
// kernel's CSPRNG (getrandom), never from a counter or std::rand: a key a peer can guess is a key it can use.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvf {

// Fills `out` with `length` random bytes; throws kvf::Error KVF_ERR_ALLOC if the kernel cannot provide them.
void RandomBytes(void* out, size_t length);

// A random 64-bit memory-region key.
uint64_t RandomKey();

}  // namespace kvf
