#include "core/transfer_plan.h"

#include <algorithm>

#include "core/peer.h"
#include "core/region.h"

namespace kvf {

std::string FindOverlap(OpKind kind, const std::vector<PreparedItem>& items, const uint32_t* indices, size_t count) {
  struct Range {
    uint64_t region, begin, end;
    size_t index;
  };
  std::vector<Range> ranges;
  ranges.reserve(count);
  for (size_t k = 0; k < count; ++k) {
    const size_t i = indices ? indices[k] : k;
    const PreparedItem& it = items[i];
    if (kind == OpKind::kWrite) {
      ranges.push_back({it.remote_id, it.remote_offset, it.remote_offset + it.length, i});
    } else {
      ranges.push_back({it.local->id, it.local_offset, it.local_offset + it.length, i});
    }
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.region != b.region ? a.region < b.region : a.begin < b.begin;
  });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const Range& a = ranges[i - 1];
    const Range& b = ranges[i];
    if (a.region == b.region && b.begin < a.end) {
      return "descriptors " + std::to_string(std::min(a.index, b.index)) + " and " +
             std::to_string(std::max(a.index, b.index)) + " overlap at the " +
             (kind == OpKind::kWrite ? "remote" : "local") + " destination";
    }
  }
  return {};
}

namespace {

// Not (a + b - 1) / b: providers report max_msg_size as large as SIZE_MAX, and that sum would wrap.
uint64_t CeilDiv(uint64_t a, uint64_t b) { return a == 0 ? 0 : 1 + (a - 1) / b; }

// Piece size when a run is striped over `rails`: a share per rail, rounded up to 4 KiB so pieces stay
// page-aligned relative to the run.
uint64_t StripeChunk(uint64_t length, size_t rails) { return CeilDiv(CeilDiv(length, rails), 4096) * 4096; }

}  // namespace

std::vector<Run> MergeRuns(const PreparedList& list, const uint32_t* indices, size_t count) {
  std::vector<Run> runs;
  runs.reserve(count);
  for (size_t k = 0; k < count; ++k) {
    const PreparedItem& it = list.items[indices ? indices[k] : k];
    if (!runs.empty()) {
      Run& r = runs.back();
      if (r.first->local == it.local && r.first->remote == it.remote && r.local_offset + r.length == it.local_offset &&
          r.remote_offset + r.length == it.remote_offset) {
        r.length += it.length;
        continue;
      }
    }
    runs.push_back({&it, it.local_offset, it.remote_offset, it.length});
  }
  return runs;
}

void PlanOps(Transfer& t, OpKind kind, const Peer& peer, const PreparedList& list, const uint32_t* indices,
             size_t count, RailPlan& plan) {
  const std::vector<Run> runs = MergeRuns(list, indices, count);
  const bool stripe = plan.rails > 1 && plan.stripe_threshold > 0;
  size_t nops = 0;
  for (const Run& r : runs) {
    if (stripe && r.length >= plan.stripe_threshold) {
      const uint64_t chunk = StripeChunk(r.length, plan.rails);
      for (uint64_t at = 0; at < r.length; at += chunk) nops += CeilDiv(std::min(chunk, r.length - at), plan.max_msg);
    } else {
      nops += CeilDiv(r.length, plan.max_msg);
    }
  }
  t.ops.resize(nops);
  size_t k = 0;
  auto emit = [&](const Run& r, uint64_t at, uint64_t length, uint32_t lr) {
    const uint32_t rr = static_cast<uint32_t>(lr % plan.remote_rails);
    const Region& local = *r.first->local;
    const RemoteRegion& remote = *r.first->remote;
    for (uint64_t done = 0; done < length;) {
      const uint64_t len = std::min<uint64_t>(length - done, plan.max_msg);
      Op& op = t.ops[k++];
      op.kind = kind;
      op.transfer = &t;
      op.local = local.data + r.local_offset + at + done;
      op.length = len;
      op.desc = local.mrs[lr].desc;
      op.dest = peer.addrs[lr][rr];
      op.remote_addr = (peer.virt_addr ? remote.base : 0) + r.remote_offset + at + done;
      op.remote_key = remote.keys[rr];
      op.rail = lr;
      op.delivery_complete = kind == OpKind::kWrite;  // write() resolves only once the data is at the target
      t.rails_mask |= 1ull << (lr % kMaxRails);
      done += len;
    }
  };
  for (const Run& r : runs) {
    if (stripe && r.length >= plan.stripe_threshold) {
      const uint64_t chunk = StripeChunk(r.length, plan.rails);
      uint32_t lr = plan.next_rail;
      for (uint64_t at = 0; at < r.length; at += chunk) {
        emit(r, at, std::min(chunk, r.length - at), lr);
        lr = static_cast<uint32_t>((lr + 1) % plan.rails);
      }
    } else {
      emit(r, 0, r.length, plan.next_rail);
    }
    plan.next_rail = static_cast<uint32_t>((plan.next_rail + 1) % plan.rails);
  }
}

}  // namespace kvf
