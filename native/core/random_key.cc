#include "core/random_key.h"

#include <sys/random.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.h"
#include "core/error_codes.h"

namespace kvf {

void RandomBytes(void* out, size_t length) {
  uint8_t* p = static_cast<uint8_t*>(out);
  while (length > 0) {
    const ssize_t got = getrandom(p, length, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(code::kAlloc, std::string("getrandom failed: ") + std::strerror(errno));
    }
    p += got;
    length -= static_cast<size_t>(got);
  }
}

uint64_t RandomKey() {
  uint64_t key = 0;
  RandomBytes(&key, sizeof(key));
  return key;
}

}  // namespace kvf
