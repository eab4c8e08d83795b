#include "core/rail.h"

#include "core/error_codes.h"
#include "core/random_key.h"

#include <rdma/fi_cm.h>
#include <rdma/fi_rma.h>

#include <netinet/in.h>
#include <poll.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

namespace kvf {

namespace {
constexpr size_t kReceiveSlots = 64;
// How long a rail keeps spinning on its CQ after the last sign of work before it blocks in fi_cq_sread.
// Spinning keeps latency low during bursts; blocking keeps an idle agent off the CPU.
constexpr auto kSpinWindow = std::chrono::microseconds(2000);
// With ops in flight, how long the thread spins after the last completion before it waits for the next one in
// the provider's blocking read (which wakes on the endpoint's activity). Spinning through a whole transfer
// kept the other threads of the process off the CPU and stalled the event loop on small machines; the window
// is about the gap between two large completions of a flowing transfer, which so rarely waits (figures:
// docs/design.md, "Progress and completion delivery", and benchmarks/RESULTS.md, "Event-loop delay").
constexpr auto kInflightSpin = std::chrono::microseconds(200);
constexpr int kIdleWaitMs = 100;
// While busy polling, how often the endpoint's descriptor is checked for a peer's activity (which extends the
// busy period; busy periods are ~1 ms).
constexpr auto kBusyFdCheck = std::chrono::microseconds(50);
}  // namespace

void Rail::CloseFid(fid_t f) {
  if (f != nullptr) fi_close(f);
}

Rail::Rail(uint32_t index, fi_info* info, RailOwner* owner, size_t receive_buffer_size,
           std::chrono::microseconds busy_poll)
    : index_(index), info_(info), owner_(owner), busy_poll_(busy_poll), receive_size_(receive_buffer_size) {
  try {
    CheckFi(fi_fabric(info_->fabric_attr, &fabric_, nullptr), "fi_fabric");
    CheckFi(fi_domain(fabric_, info_, &domain_, nullptr), "fi_domain");

    fi_cq_attr cq_attr{};
    cq_attr.format = FI_CQ_FORMAT_DATA;
    cq_attr.size = std::max<size_t>(info_->tx_attr->size + info_->rx_attr->size, 1024);
    // Busy polling needs a descriptor to poll ourselves (see WaitIdle); otherwise the provider's own blocking
    // read, fi_cq_sread, measured best for bandwidth.
    cq_attr.wait_obj = FI_WAIT_FD;
    if (busy_poll_.count() > 0 && fi_cq_open(domain_, &cq_attr, &cq_, nullptr) == 0) {
      cq_can_wait_ = true;
      if (fi_control(&cq_->fid, FI_GETWAIT, &wait_fd_) != 0) wait_fd_ = -1;
    } else if (cq_attr.wait_obj = FI_WAIT_UNSPEC; fi_cq_open(domain_, &cq_attr, &cq_, nullptr) == 0) {
      cq_can_wait_ = true;
    } else {
      // Providers without wait objects still work: the progress thread then polls with short sleeps.
      cq_attr.wait_obj = FI_WAIT_NONE;
      CheckFi(fi_cq_open(domain_, &cq_attr, &cq_, nullptr), "fi_cq_open");
    }

    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    CheckFi(fi_av_open(domain_, &av_attr, &av_, nullptr), "fi_av_open");

    CheckFi(fi_endpoint(domain_, info_, &ep_, nullptr), "fi_endpoint");
    CheckFi(fi_ep_bind(ep_, &cq_->fid, FI_TRANSMIT | FI_RECV), "fi_ep_bind(cq)");
    CheckFi(fi_ep_bind(ep_, &av_->fid, 0), "fi_ep_bind(av)");
    CheckFi(fi_enable(ep_), "fi_enable");

    size_t addrlen = 0;
    fi_getname(&ep_->fid, nullptr, &addrlen);
    address_.resize(addrlen);
    CheckFi(fi_getname(&ep_->fid, address_.data(), &addrlen), "fi_getname");
    address_.resize(addrlen);

    tx_depth_ = info_->tx_attr->size > 0 ? info_->tx_attr->size : 128;
    const char* prov = info_->fabric_attr->prov_name;
    retry_dropped_ = prov != nullptr && std::strstr(prov, "tcp") != nullptr;
    reads_block_close_ = retry_dropped_ && FI_VERSION_LT(fi_version(), FI_VERSION(1, 18));
    max_msg_size_ = info_->ep_attr->max_msg_size > 0 ? info_->ep_attr->max_msg_size : (1ull << 30);

    if (receive_size_ > 0) {
      receive_buffer_.resize(receive_size_ * kReceiveSlots);
      if (needs_local_mr()) receive_mr_ = RegisterMemory(receive_buffer_.data(), receive_buffer_.size(), 0);
      receive_ops_.resize(kReceiveSlots);
      for (size_t i = 0; i < kReceiveSlots; ++i) PostReceive(i);
    }
  } catch (...) {
    CloseMr(receive_mr_);
    CloseFid(ep_ ? &ep_->fid : nullptr);
    CloseFid(av_ ? &av_->fid : nullptr);
    CloseFid(cq_ ? &cq_->fid : nullptr);
    CloseFid(domain_ ? &domain_->fid : nullptr);
    CloseFid(fabric_ ? &fabric_->fid : nullptr);
    fi_freeinfo(info_);
    throw;
  }
}

Rail::~Rail() {
  RequestStop(true);
  Join();
  CloseEndpoint();
  CloseMr(receive_mr_);
  CloseFid(&av_->fid);
  CloseFid(&cq_->fid);
  CloseFid(&domain_->fid);
  CloseFid(&fabric_->fid);
  fi_freeinfo(info_);
}

void Rail::Start() {
  thread_ = std::thread([this] { Run(); });
}

void Rail::RequestStop(bool force) {
  if (force) force_ = true;
  stop_ = true;
  Wake();
}

void Rail::Join() {
  if (thread_.joinable()) thread_.join();
}

bool Rail::JoinWithin(std::chrono::milliseconds timeout) {
  if (!thread_.joinable()) return true;
  std::unique_lock<std::mutex> lock(exit_mu_);
  if (exit_cv_.wait_for(lock, timeout, [this] { return exited_; })) {
    lock.unlock();
    thread_.join();
    return true;
  }
  orphaned_ = true;
  thread_.detach();
  return false;
}

void Rail::Posted(const Op* op) {
  ++inflight_;
  if (op->kind == OpKind::kRead) ++reads_inflight_;
}

void Rail::Retired(const Op* op) {
  --inflight_;
  if (op->kind == OpKind::kRead) --reads_inflight_;
}

size_t Rail::DropCompletions(fid_cq* cq) {
  size_t reads = 0;
  fi_cq_data_entry entries[kCqBatch];
  const ssize_t n = fi_cq_read(cq, entries, kCqBatch);
  for (ssize_t i = 0; i < n; ++i) {
    const Op* op = static_cast<const Op*>(entries[i].op_context);
    if (!(entries[i].flags & FI_RECV) && op != nullptr && op->kind == OpKind::kRead) ++reads;
  }
  if (n == -FI_EAVAIL) {
    fi_cq_err_entry err{};
    if (fi_cq_readerr(cq, &err, 0) > 0) {
      const Op* op = static_cast<const Op*>(err.op_context);
      if (!(err.flags & FI_RECV) && op != nullptr && op->kind == OpKind::kRead) ++reads;
    }
  }
  return reads;
}

bool Rail::Quiesce(std::chrono::steady_clock::time_point deadline) {
  if (!reads_block_close_ || orphaned_) return true;
  // The ops' contexts are still valid: the owner abandons their transfers only after the endpoints are closed.
  while (reads_inflight_ > 0 && std::chrono::steady_clock::now() < deadline) {
    const size_t done = DropCompletions(cq_);
    reads_inflight_ -= std::min(done, reads_inflight_);
    if (done == 0) sched_yield();
  }
  std::lock_guard<std::mutex> lock(express_mu_);
  while (express_cq_ != nullptr && express_reads_ > 0 && std::chrono::steady_clock::now() < deadline) {
    const size_t done = DropCompletions(express_cq_);
    express_reads_ -= std::min(done, express_reads_);
    if (done == 0) sched_yield();
  }
  if (reads_inflight_ == 0 && (express_cq_ == nullptr || express_reads_ == 0)) return true;
  // With automatic data progress a provider thread would go on driving a leaked endpoint, into memory the owner
  // is about to release: close it anyway. Manual progress (ofi_rxm's default): leak it.
  return info_->domain_attr->data_progress != FI_PROGRESS_MANUAL;
}

void Rail::CloseEndpoint() {
  CloseExpress();
  if (ep_ != nullptr) fi_close(&ep_->fid);
  ep_ = nullptr;
}

void Rail::Wake() {
  if (cq_can_wait_ && cq_ != nullptr) fi_cq_signal(cq_);
}

RailMr Rail::RegisterMemory(void* data, size_t length, uint64_t remote_flags, bool local, const HmemTarget* hmem) {
  RailMr out;
  const uint64_t access =
      (local ? FI_READ | FI_WRITE | FI_SEND | FI_RECV : 0) | (remote_flags & (FI_REMOTE_READ | FI_REMOTE_WRITE));
  // With provider keys the requested key is ignored; otherwise a random one, retried on the (2^-64-unlikely)
  // clash with a key this domain already holds (the provider answers -FI_ENOKEY).
  int rc = -FI_ENOKEY;
  for (int attempt = 0; attempt < 4 && rc == -FI_ENOKEY; ++attempt) {
    const uint64_t key = provider_keys() ? 0 : RandomKey();
    if (hmem == nullptr) {
      rc = fi_mr_reg(domain_, data, length, access, 0, key, 0, &out.mr, nullptr);
      continue;
    }
    // libfabric's CUDA support registers through dma-buf itself where the driver and NIC allow it
    // (FI_HMEM_CUDA_USE_DMABUF), else through nvidia_peermem: the interface and device are all it needs here.
    const iovec iov{data, length};
    fi_mr_attr attr{};
    attr.mr_iov = &iov;
    attr.iov_count = 1;
    attr.access = access;
    attr.requested_key = key;
    attr.iface = hmem->iface;
    attr.device.cuda = hmem->device;
    rc = fi_mr_regattr(domain_, &attr, 0, &out.mr);
  }
  CheckFi(rc, hmem == nullptr ? "fi_mr_reg" : "fi_mr_regattr (FI_HMEM)");
  if (info_->domain_attr->mr_mode & FI_MR_ENDPOINT) {
    int rc = fi_mr_bind(out.mr, &ep_->fid, 0);
    if (rc == 0) rc = fi_mr_enable(out.mr);
    if (rc != 0) {
      fi_close(&out.mr->fid);
      CheckFi(rc, "fi_mr_bind/enable");
    }
  }
  out.desc = fi_mr_desc(out.mr);
  out.key = fi_mr_key(out.mr);
  return out;
}

void Rail::CloseMr(RailMr& mr) {
  if (mr.mr != nullptr) fi_close(&mr.mr->fid);
  mr = RailMr{};
}

fi_addr_t Rail::InsertAddress(const uint8_t* address, size_t length) {
  // String addresses (shm's "fi_shm://name") vary in length and must be NUL-terminated; binary ones
  // (sockaddr, efa GIDs) have the provider's fixed size.
  if (info_->addr_format == FI_ADDR_STR) {
    if (length == 0 || address[length - 1] != '\0' || std::memchr(address, '\0', length) != address + length - 1) {
      throw Error(code::kBadMetadata, "peer endpoint address is not a NUL-terminated string");
    }
  } else if (length != address_.size()) {
    throw Error(code::kProviderMismatch, "peer endpoint address is " + std::to_string(length) +
                                             " bytes, this provider's are " + std::to_string(address_.size()));
  }
  const bool sockaddr = info_->addr_format == FI_SOCKADDR || info_->addr_format == FI_SOCKADDR_IN ||
                        info_->addr_format == FI_SOCKADDR_IN6;
  if (sockaddr && std::memcmp(address, address_.data(), sizeof(sa_family_t)) != 0) {
    // libfabric 1.17's IP address vectors take an address's length from its family, and set the AV's length
    // to it before checking anything else: one address of an unknown family shrank it, and every later
    // insert failed as "too large" (one bad blob poisoned the agent). So the family must be ours.
    throw Error(code::kBadMetadata, "peer endpoint address is not of this endpoint's address family");
  }
  fi_addr_t out = FI_ADDR_NOTAVAIL;
  int rc = fi_av_insert(av_, address, 1, &out, 0, nullptr);
  if (rc != 1) CheckFi(rc < 0 ? rc : -FI_EINVAL, "fi_av_insert");
  std::lock_guard<std::mutex> lock(express_mu_);
  inserted_.emplace_back(address, address + length);
  if (out != inserted_.size() - 1) {
    express_closed_ = true;  // the provider numbers addresses its own way: mirroring would not line up
  } else if (express_av_ != nullptr && MirrorAddress(out) != 0) {
    express_closed_ = true;  // express ops to this peer cannot be addressed; the rail thread carries all
  }
  return out;
}

void Rail::Submit(Op* const* ops, size_t count) {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    queue_.insert(queue_.end(), ops, ops + count);
  }
  // Only a thread about to sleep needs the signal: a spinning one finds the queue on its next round, and
  // fi_cq_signal is a system call, a large part of a small post's cost on shm (docs/design.md, "The express lane").
  if (sleeping_.load()) Wake();
}

void Rail::PostReceive(size_t slot) {
  Op& op = receive_ops_[slot];
  op = Op{};
  op.local = receive_buffer_.data() + slot * receive_size_;
  op.length = receive_size_;
  op.desc = receive_mr_.desc;
  op.rail = index_;
  ssize_t rc;
  do {
    rc = fi_recv(ep_, op.local, op.length, op.desc, FI_ADDR_UNSPEC, &op.ctx);
    if (rc == -FI_EAGAIN) fi_cq_read(cq_, nullptr, 0);
  } while (rc == -FI_EAGAIN && !force_);
  CheckFi(static_cast<int>(rc), "fi_recv");
}

int Rail::Post(fid_ep* ep, Op* op) {
  ssize_t rc = -FI_EINVAL;
  switch (op->kind) {
    case OpKind::kWrite:
      if (op->delivery_complete) {
        iovec iov{op->local, op->length};
        fi_rma_iov rma{op->remote_addr, op->length, op->remote_key};
        fi_msg_rma msg{};
        msg.msg_iov = &iov;
        msg.desc = &op->desc;
        msg.iov_count = 1;
        msg.addr = op->dest;
        msg.rma_iov = &rma;
        msg.rma_iov_count = 1;
        msg.context = &op->ctx;
        rc = fi_writemsg(ep, &msg, FI_COMPLETION | FI_DELIVERY_COMPLETE);
      } else {
        rc = fi_write(ep, op->local, op->length, op->desc, op->dest, op->remote_addr, op->remote_key, &op->ctx);
      }
      break;
    case OpKind::kRead:
      rc = fi_read(ep, op->local, op->length, op->desc, op->dest, op->remote_addr, op->remote_key, &op->ctx);
      break;
    case OpKind::kSend:
      rc = fi_send(ep, op->local, op->length, op->desc, op->dest, &op->ctx);
      break;
  }
  return static_cast<int>(rc);
}

void Rail::HandleCompletion(const fi_cq_data_entry& entry) {
  if (orphaned_) return;
  Op* op = reinterpret_cast<Op*>(entry.op_context);
  if (entry.flags & FI_RECV) {
    owner_->OnMessage(static_cast<const uint8_t*>(op->local), entry.len);
    if (!force_) PostReceive(static_cast<size_t>(op - receive_ops_.data()));
    return;
  }
  Retired(op);
  if (op == probing_) {
    ProbeSucceeded(op);
    return;
  }
  if (Recovering()) recovered_any_ = true;
  owner_->OnOpComplete(op, nullptr);
}

void Rail::HandleCqError() {
  if (orphaned_) return;
  fi_cq_err_entry err{};
  if (fi_cq_readerr(cq_, &err, 0) <= 0) return;
  Op* op = reinterpret_cast<Op*>(err.op_context);
  if (op == nullptr) return;
  if (err.flags & FI_RECV) {
    // Canceled receives at shutdown are expected; anything else drops one control message, so re-arm.
    if (!force_) PostReceive(static_cast<size_t>(op - receive_ops_.data()));
    return;
  }
  Retired(op);
  const char* prov = fi_cq_strerror(cq_, err.prov_errno, err.err_data, nullptr, 0);
  ErrorInfo info = ProviderError("rail " + std::to_string(index_) + " operation failed", -err.err);
  if (prov != nullptr && *prov != '\0') info.provider_message = prov;
  if (op == probing_) {
    ProbeFailed(op, info);
    return;
  }
  if (Suspect(op, err.err)) return;
  owner_->OnOpComplete(op, &info);
}

Rail::IdleEnd Rail::WaitIdle() {
  fi_cq_data_entry entries[kCqBatch];
  if (!cq_can_wait_) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    return IdleEnd::kNothing;
  }
  if (wait_fd_ >= 0) {
    // Our own wait on the CQ's descriptor, where fi_cq_sread would hide one thing: that the endpoint woke
    // without a completion, which is what serving a peer's READ or WRITE looks like (busy polling needs it).
    // fi_trywait says whether sleeping is safe.
    bool woke = true;
    if (fi_trywait(fabric_, reinterpret_cast<fid**>(&cq_), 1) == FI_SUCCESS) woke = PollWaitFd(kIdleWaitMs);
    // fi_cq_read drives the provider's progress.
    if (HandleRead(fi_cq_read(cq_, entries, kCqBatch), entries)) return IdleEnd::kCompletion;
    return woke ? IdleEnd::kEndpoint : IdleEnd::kNothing;
  }
  // fi_cq_sread drives manual progress internally while it waits, so incoming RMA still lands.
  return HandleRead(fi_cq_sread(cq_, entries, kCqBatch, nullptr, kIdleWaitMs), entries) ? IdleEnd::kCompletion
                                                                                        : IdleEnd::kNothing;
}

bool Rail::HandleRead(ssize_t n, const fi_cq_data_entry* entries) {
  if (n > 0) {
    for (ssize_t i = 0; i < n; ++i) HandleCompletion(entries[i]);
    return true;
  }
  if (n == -FI_EAVAIL) {
    HandleCqError();
    return true;
  }
  return false;
}

bool Rail::PollWaitFd(int timeout_ms) {
  pollfd p{wait_fd_, POLLIN, 0};
  return poll(&p, 1, timeout_ms) > 0;
}

void Rail::Run() {
  RunLoop();
  std::lock_guard<std::mutex> lock(exit_mu_);
  exited_ = true;
  exit_cv_.notify_all();
}

void Rail::RunLoop() {
  std::deque<Op*> pending;
  fi_cq_data_entry entries[kCqBatch];
  auto last_work = std::chrono::steady_clock::now();
  auto busy_until = last_work;
  auto next_fd_check = last_work;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      for (Op* op : queue_) {
        if (op->suspect) {
          Suspect(op, FI_ECANCELED);  // handed over by the express lane, whose connection dropped
        } else {
          pending.push_back(op);
        }
      }
      queue_.clear();
    }
    if (force_) break;
    if (stop_ && pending.empty() && inflight_ == 0 && !Recovering()) break;

    bool worked = false;
    // While recovering from a dropped connection new work waits: retries go alone (rail_recovery.cc).
    if (Recovering()) DriveRecovery();
    while (!Recovering() && !pending.empty() && inflight_ < tx_depth_) {
      Op* op = pending.front();
      const auto posting = std::chrono::steady_clock::now();
      int rc = Post(ep_, op);
      const auto posted = std::chrono::steady_clock::now();
      if (orphaned_) return;  // we were given up on while inside the provider: touch nothing of the owner's
      if (rc == -FI_EAGAIN) break;
      pending.pop_front();
      worked = true;
      if (rc == 0) {
        Posted(op);
        owner_->OnOpPosted(op, std::chrono::duration_cast<std::chrono::nanoseconds>(posted - posting).count());
      } else if (!Suspect(op, rc)) {
        ErrorInfo info = ProviderError("posting on rail " + std::to_string(index_), rc);
        owner_->OnOpComplete(op, &info);
      }
    }

    if (HandleRead(fi_cq_read(cq_, entries, kCqBatch), entries)) worked = true;

    auto now = std::chrono::steady_clock::now();
    // Busy polling: a peer's READs and WRITEs leave no completion here, so while busy the endpoint's
    // descriptor is checked for activity, which extends the busy period.
    const bool busy = now < busy_until;
    if (busy && now >= next_fd_check) {
      // Not every round: a poll() is a system call, several times the cost of the CQ read a round is for.
      next_fd_check = now + kBusyFdCheck;
      if (PollWaitFd(0)) busy_until = now + busy_poll_;
    }
    if (worked) {
      last_work = now;
    } else if (busy) {
      // Busy polling asked for a core: spin without yielding, as the raw baseline's target does (a
      // sched_yield per round slowed every small READ served). Except while the posting thread spins for
      // a completion too: three spinners on two cores (two here, the peer's rail) otherwise let one run out
      // its time slice while the other waits; yielding makes a shared core alternate and keeps the latency
      // steady (figures: docs/design.md, "The express lane").
      if (owner_->owner_spinning()) sched_yield();
    } else if (!pending.empty() || Recovering() || now - last_work < (inflight_ > 0 ? kInflightSpin : kSpinWindow) ||
               (inflight_ > 0 && !cq_can_wait_)) {
      sched_yield();
    } else {
      // From here Submit signals: announce the sleep first, then look at the queue once more, so that a post
      // either sees the flag or is seen here (both sides go through queue_mu_).
      sleeping_.store(true);
      bool queued;
      {
        std::lock_guard<std::mutex> lock(queue_mu_);
        queued = !queue_.empty();
      }
      const IdleEnd wake = queued ? IdleEnd::kNothing : WaitIdle();
      sleeping_.store(false);
      now = std::chrono::steady_clock::now();
      if (wake == IdleEnd::kCompletion) last_work = now;
      if (wake != IdleEnd::kNothing && wait_fd_ >= 0) busy_until = now + busy_poll_;
    }
  }
  if (orphaned_) return;
  // Forced stop: whatever never reached the provider fails here; posted ops are failed by the owner
  // after the endpoint is closed.
  ErrorInfo closed{code::kClosed, "agent closed before the operation was posted", 0, {}};
  for (Op* op : pending) owner_->OnOpComplete(op, &closed);
  FailSuspects(closed);
  std::lock_guard<std::mutex> lock(queue_mu_);
  for (Op* op : queue_) owner_->OnOpComplete(op, &closed);
  queue_.clear();
}

}  // namespace kvf
