// The express lane (Rail::PostExpress in rail.h): opening its endpoint on first use, posting, reaping, closing.
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/rail.h"

namespace kvf {

bool Rail::OpenExpress() {
  // Memory registered per endpoint would need binding to this one too; no provider we run needs that.
  if (info_->domain_attr->mr_mode & FI_MR_ENDPOINT) return false;
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_DATA;
  cq_attr.size = std::max<size_t>(info_->tx_attr->size, 256);
  cq_attr.wait_obj = FI_WAIT_NONE;  // only ever polled
  // Its own source address: shm names endpoints by string (ours are unique per rail), sockets by port.
  fi_info* info = fi_dupinfo(info_);
  if (info == nullptr) return false;
  if (info->src_addr != nullptr && info->addr_format == FI_ADDR_STR) {
    std::string name = std::string(static_cast<const char*>(info->src_addr)) + "_x";
    free(info->src_addr);
    info->src_addr = strdup(name.c_str());
    info->src_addrlen = name.size() + 1;
  } else if (info->src_addr != nullptr && info->addr_format == FI_SOCKADDR_IN) {
    static_cast<sockaddr_in*>(info->src_addr)->sin_port = 0;
  } else if (info->src_addr != nullptr && info->addr_format == FI_SOCKADDR_IN6) {
    static_cast<sockaddr_in6*>(info->src_addr)->sin6_port = 0;
  }
  // Providers that need no local registration get a domain of their own, so that the express lane shares
  // no progress engine (and none of its locks) with the rail thread; the others share the rail's domain,
  // where the regions' descriptors are valid. The address vector is mirrored: same addresses, same order,
  // so the rail's fi_addr_t values are valid here too.
  const bool own_domain = !needs_local_mr();
  fid_domain* domain = domain_;
  fid_av* av = av_;
  int rc = 0;
  if (own_domain) {
    rc = fi_fabric(info->fabric_attr, &express_fabric_, nullptr);
    if (rc == 0) rc = fi_domain(express_fabric_, info, &express_domain_, nullptr);
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    if (rc == 0) rc = fi_av_open(express_domain_, &av_attr, &express_av_, nullptr);
    for (size_t i = 0; rc == 0 && i < inserted_.size(); ++i) rc = MirrorAddress(i);
    domain = express_domain_;
    av = express_av_;
  }
  fid_cq* cq = nullptr;
  fid_ep* ep = nullptr;
  if (rc == 0) rc = fi_cq_open(domain, &cq_attr, &cq, nullptr);
  if (rc == 0) rc = fi_endpoint(domain, info, &ep, nullptr);
  fi_freeinfo(info);
  if (rc == 0) rc = fi_ep_bind(ep, &cq->fid, FI_TRANSMIT | FI_RECV);
  if (rc == 0) rc = fi_ep_bind(ep, &av->fid, 0);
  if (rc == 0) rc = fi_enable(ep);
  express_ep_ = ep;
  express_cq_ = cq;
  if (rc != 0) {
    CloseExpressFids();
    return false;
  }
  return true;
}

int Rail::MirrorAddress(size_t i) {
  fi_addr_t out = FI_ADDR_NOTAVAIL;
  const int rc = fi_av_insert(express_av_, inserted_[i].data(), 1, &out, 0, nullptr);
  return rc == 1 && out == i ? 0 : -FI_EINVAL;
}

void Rail::CloseExpressFids() {
  CloseFid(express_ep_ ? &express_ep_->fid : nullptr);
  CloseFid(express_cq_ ? &express_cq_->fid : nullptr);
  CloseFid(express_av_ ? &express_av_->fid : nullptr);
  CloseFid(express_domain_ ? &express_domain_->fid : nullptr);
  CloseFid(express_fabric_ ? &express_fabric_->fid : nullptr);
  express_ep_ = nullptr;
  express_cq_ = nullptr;
  express_av_ = nullptr;
  express_domain_ = nullptr;
  express_fabric_ = nullptr;
}

void Rail::CloseExpress() {
  std::lock_guard<std::mutex> lock(express_mu_);
  express_closed_ = true;
  CloseExpressFids();
  express_backlog_.clear();
  express_inflight_ = 0;  // their transfers are abandoned by the owner
  express_reads_ = 0;
}

int Rail::PostExpress(Op* op) {
  std::lock_guard<std::mutex> lock(express_mu_);
  if (express_closed_ || orphaned_) return -FI_ECANCELED;
  if (express_ep_ == nullptr && !OpenExpress()) {
    express_closed_ = true;  // not available on this provider: never try again
    return -FI_ENOSYS;
  }
  ++express_inflight_;
  // -FI_EAGAIN (the queue is full, or rxm is still connecting to this peer): the op waits here, in order,
  // and ReapExpress posts it once progress has made room.
  if (express_backlog_.empty()) {
    const int rc = Post(express_ep_, op);
    if (rc != -FI_EAGAIN) {
      if (rc != 0) --express_inflight_;
      if (rc == 0 && op->kind == OpKind::kRead) ++express_reads_;
      return rc;
    }
  }
  express_backlog_.push_back(op);
  return kExpressQueued;
}

size_t Rail::ReapExpress() {
  if (express_inflight_.load(std::memory_order_relaxed) == 0) return 0;
  std::lock_guard<std::mutex> lock(express_mu_);
  if (express_cq_ == nullptr) return 0;
  fi_cq_data_entry entries[kCqBatch];
  ssize_t n = fi_cq_read(express_cq_, entries, kCqBatch);
  if (n > 0) {
    for (ssize_t i = 0; i < n; ++i) {
      --express_inflight_;
      Op* op = reinterpret_cast<Op*>(entries[i].op_context);
      if (op->kind == OpKind::kRead) --express_reads_;
      owner_->OnOpComplete(op, nullptr);
    }
  } else if (n == -FI_EAVAIL) {
    fi_cq_err_entry err{};
    if (fi_cq_readerr(express_cq_, &err, 0) > 0 && err.op_context != nullptr) {
      --express_inflight_;
      Op* op = reinterpret_cast<Op*>(err.op_context);
      if (op->kind == OpKind::kRead) --express_reads_;
      if (retry_dropped_ && !express_closed_ &&
          (err.err == FI_ENOTCONN || err.err == FI_ECANCELED || err.err == FI_ECONNRESET ||
           err.err == FI_ECONNABORTED || err.err == FI_EIO)) {
        // The express connection dropped (a refused op among them): the rail thread retries them one by one.
        op->express = false;
        op->suspect = true;
        Submit(op);
        return express_inflight_;
      }
      ErrorInfo info = ProviderError("rail " + std::to_string(index_) + " operation failed", -err.err);
      const char* prov = fi_cq_strerror(express_cq_, err.prov_errno, err.err_data, nullptr, 0);
      if (prov != nullptr && *prov != '\0') info.provider_message = prov;
      owner_->OnOpComplete(reinterpret_cast<Op*>(err.op_context), &info);
    }
  }
  while (!express_backlog_.empty()) {
    Op* op = express_backlog_.front();
    const auto posting = std::chrono::steady_clock::now();
    const int rc = Post(express_ep_, op);
    if (rc == -FI_EAGAIN) break;
    express_backlog_.pop_front();
    if (rc == 0) {
      if (op->kind == OpKind::kRead) ++express_reads_;
      owner_->OnOpPosted(
          op, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - posting).count());
    } else {
      --express_inflight_;
      ErrorInfo info = ProviderError("posting on rail " + std::to_string(index_), rc);
      owner_->OnOpComplete(op, &info);
    }
  }
  return express_inflight_;
}

}  // namespace kvf
