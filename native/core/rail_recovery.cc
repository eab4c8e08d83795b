// Recovery from a connection the provider dropped because the target refused one operation.
//
// libfabric 1.17's tcp provider (xnet, under ofi_rxm) verifies a peer's key when the request arrives; on a
// failure it disables the whole connection, and every other operation in flight on it fails as well
// (ENOTCONN / ECANCELED); rxm connects again on the next post. Nothing in the errors says which operation
// was refused. So the rail holds new work, lets what is in flight drain, and retries the failed operations
// one at a time: one that succeeds alone completes normally; one that fails alone on a connection that
// has carried other retries is the refused one and fails with KVF_ERR_REMOTE_ACCESS. The first retries
// after the drop may find the connection still down, so each gets a few attempts with backoff; and a
// suspect that fails alone before anything else succeeded is retried again after the others, so that a
// refused op first in line is not mistaken for a dead peer. Two suspects failing alone with nothing
// succeeding in between means the peer is unreachable: everything left fails with the provider's error.
#include <chrono>
#include <string>

#include "core/error_codes.h"
#include "core/rail.h"

namespace kvf {

namespace {
constexpr int kProbeAttempts = 6;
constexpr auto kProbeBackoff = std::chrono::milliseconds(5);  // doubled every attempt: 5, 10, ... 80 ms

bool ConnectionError(int err) {
  switch (err < 0 ? -err : err) {
    case FI_ENOTCONN:
    case FI_ECANCELED:
    case FI_ECONNRESET:
    case FI_ECONNABORTED:
    case FI_ECONNREFUSED:
    case FI_EIO:
      return true;
    default:
      return false;
  }
}
}  // namespace

bool Rail::Suspect(Op* op, int err) {
  if (!retry_dropped_ || force_ || op->kind == OpKind::kSend || !ConnectionError(err)) return false;
  if (!Recovering()) {
    recovered_any_ = false;
    failed_alone_ = 0;
    next_probe_ = std::chrono::steady_clock::now();
  }
  op->suspect = true;
  suspects_.push_back(op);
  return true;
}

void Rail::DriveRecovery() {
  if (inflight_ > 0) return;  // let everything in flight fail or finish first; a probe goes alone
  if (probing_ == nullptr) {
    if (suspects_.empty()) return;
    probing_ = suspects_.front();
    suspects_.pop_front();
    probe_attempts_ = 0;
    probe_posted_ = false;
  }
  if (probe_posted_ || std::chrono::steady_clock::now() < next_probe_) return;
  const int rc = Post(ep_, probing_);
  if (rc == -FI_EAGAIN) return;
  if (rc == 0) {
    probe_posted_ = true;
    Posted(probing_);
    return;
  }
  ProbeFailed(probing_, ProviderError("posting on rail " + std::to_string(index_), rc));
}

void Rail::ProbeSucceeded(Op* op) {
  probing_ = nullptr;
  probe_posted_ = false;
  recovered_any_ = true;
  failed_alone_ = 0;
  op->suspect = false;
  owner_->OnOpComplete(op, nullptr);
}

void Rail::ProbeFailed(Op* op, const ErrorInfo& error) {
  probe_posted_ = false;
  if (ConnectionError(error.fi_errno) && ++probe_attempts_ < kProbeAttempts) {
    next_probe_ = std::chrono::steady_clock::now() + kProbeBackoff * (1 << (probe_attempts_ - 1));
    return;  // the connection may still be coming back: the same op again, later
  }
  probing_ = nullptr;
  // The next probe finds a connection that this failure dropped again: give rxm a moment.
  next_probe_ = std::chrono::steady_clock::now() + kProbeBackoff;
  if (!recovered_any_ && ++failed_alone_ >= 2) {
    ErrorInfo unreachable = error;
    unreachable.message += " (retried alone " + std::to_string(kProbeAttempts) + " times; the peer is unreachable)";
    op->suspect = false;
    owner_->OnOpComplete(op, &unreachable);
    FailSuspects(unreachable);
    return;
  }
  if (!recovered_any_ && !op->deferred && !suspects_.empty()) {
    op->deferred = true;  // judged after the others: it may be the refused one, or the peer may be gone
    suspects_.push_back(op);
    return;
  }
  ErrorInfo refused{code::kRemoteAccess,
                    "rail " + std::to_string(index_) + ": the peer refused the operation (bad key, or a region it " +
                        "no longer registers); it failed alone " + std::to_string(kProbeAttempts) +
                        " times while other operations to the peer succeeded",
                    error.fi_errno, error.provider_message};
  if (!recovered_any_) refused = error;  // nothing else to compare with: report what the provider said
  op->suspect = false;
  owner_->OnOpComplete(op, &refused);
}

void Rail::FailSuspects(const ErrorInfo& error) {
  if (probing_ != nullptr && !probe_posted_) {
    Op* op = probing_;
    probing_ = nullptr;
    owner_->OnOpComplete(op, &error);
  }
  while (!suspects_.empty()) {
    Op* op = suspects_.front();
    suspects_.pop_front();
    owner_->OnOpComplete(op, &error);
  }
}

}  // namespace kvf
