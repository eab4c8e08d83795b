// Errors raised by the core carry a stable kvfabric code (core/error_codes.h) and, when they come from
// libfabric, its errno and fi_strerror text. The binding hands them to its callers unchanged.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_errno.h>

#include <stdexcept>
#include <string>

#include "core/error_codes.h"

namespace kvf {

struct ErrorInfo {
  std::string code;
  std::string message;
  int fi_errno = 0;              // positive libfabric errno, 0 when not from libfabric
  std::string provider_message;  // fi_strerror / provider text
  bool ok() const { return code.empty(); }
};

class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message, int fi_errno = 0, std::string provider_message = {})
      : std::runtime_error(message),
        code_(std::move(code)),
        fi_errno_(fi_errno),
        provider_message_(std::move(provider_message)) {}
  const std::string& code() const { return code_; }
  int fi_errno() const { return fi_errno_; }
  const std::string& provider_message() const { return provider_message_; }
  ErrorInfo info() const { return {code_, what(), fi_errno_, provider_message_}; }

 private:
  std::string code_;
  int fi_errno_;
  std::string provider_message_;
};

inline ErrorInfo ProviderError(const std::string& what, int rc) {
  int e = rc < 0 ? -rc : rc;
  return {code::kProvider, what + ": " + fi_strerror(e), e, fi_strerror(e)};
}

// Throws KVF_ERR_PROVIDER when a libfabric call returned a negative errno.
inline void CheckFi(int rc, const std::string& what) {
  if (rc < 0) {
    ErrorInfo e = ProviderError(what, rc);
    throw Error(e.code, e.message, e.fi_errno, e.provider_message);
  }
}

}  // namespace kvf
