// Session::Step, the batched forward step (session.h), and Prefill/Decode as steps of one sequence: per-sequence
// validation, the check that no two sequences of a step write blocks the other touches, the split of more rows
// than max_batch into passes, and dropping cancelled sequences between passes.
#include <algorithm>
#include <string>
#include <unordered_set>

#include "core/error_codes.h"
#include "engine/session.h"

namespace kvf::engine {
namespace {

[[noreturn]] void Invalid(const std::string& msg) { throw Error(code::kInvalidArgument, msg); }

// The block ids of `table` that positions [from, to) use.
void BlocksOf(const BlockTable& table, int64_t from, int64_t to, int tpb, std::unordered_set<int32_t>& out) {
  for (int64_t b = from / tpb; b <= (to - 1) / tpb && b < static_cast<int64_t>(table.size()); ++b)
    out.insert(table[static_cast<size_t>(b)]);
}

bool Intersects(const std::unordered_set<int32_t>& a, const std::unordered_set<int32_t>& b) {
  const auto& small = a.size() < b.size() ? a : b;
  const auto& large = a.size() < b.size() ? b : a;
  return std::any_of(small.begin(), small.end(), [&](int32_t x) { return large.count(x) != 0; });
}

}  // namespace

void Session::Validate(const SeqBatch& seq) const {
  if (seq.n <= 0 || seq.tokens == nullptr) Invalid("prefill needs at least one token");
  if (seq.table == nullptr) Invalid("a sequence of a step needs a block table");
  const LlamaHparams& hp = model_.hparams();
  const int64_t start_pos = seq.start_pos, n = seq.n;
  if (start_pos < 0) Invalid("negative start position " + std::to_string(start_pos));
  if (start_pos + n > hp.n_ctx)
    throw Error(code::kContextOverflow, "positions " + std::to_string(start_pos) + ".." +
                                            std::to_string(start_pos + n - 1) + " exceed the context length " +
                                            std::to_string(hp.n_ctx));
  const BlockTable& table = *seq.table;
  const int64_t covered = static_cast<int64_t>(table.size()) * pool_.layout().tokens_per_block;
  if (covered < start_pos + n)
    Invalid("block table of " + std::to_string(table.size()) + " blocks covers " + std::to_string(covered) +
            " positions, " + std::to_string(start_pos + n) + " needed");
  pool_.CheckTable(table);
  for (int64_t i = 0; i < n; ++i)
    if (seq.tokens[i] < 0 || seq.tokens[i] >= hp.n_vocab)
      Invalid("token id " + std::to_string(seq.tokens[i]) + " outside the vocabulary of " + std::to_string(hp.n_vocab));
}

std::vector<SeqResult> Session::Step(const std::vector<SeqBatch>& batch) {
  const size_t count = batch.size();
  const int tpb = pool_.layout().tokens_per_block;
  std::vector<SeqResult> results(count);
  std::vector<int64_t> done(count, 0);
  std::vector<bool> active(count, false);
  // Blocks the accepted sequences write, and all the blocks they touch: a later sequence may neither read nor
  // write a block an earlier one writes (the rows of a pass run layer by layer for all sequences together).
  std::unordered_set<int32_t> written, touched;
  for (size_t i = 0; i < count; ++i) {
    const SeqBatch& s = batch[i];
    try {
      Validate(s);
      std::unordered_set<int32_t> w, t;
      BlocksOf(*s.table, s.start_pos, s.start_pos + s.n, tpb, w);
      BlocksOf(*s.table, 0, s.start_pos + s.n, tpb, t);
      if (Intersects(w, touched) || Intersects(t, written))
        Invalid("sequence " + std::to_string(i) + " of the step uses a block another sequence of it writes");
      written.insert(w.begin(), w.end());
      touched.insert(t.begin(), t.end());
      active[i] = true;
    } catch (const Error& e) {
      results[i].error = e.info();
    }
  }

  // Dropped before the pass would have run its layer 0.
  const ErrorInfo cancelled{code::kCancelled, "forward pass cancelled at layer 0: its request ended", 0, {}};
  for (;;) {
    // One pass: rows of the active sequences in order, at most max_batch; a sequence that does not fit whole
    // continues in the next pass (its K/V up to there is in the pool by then).
    std::vector<Segment> segs;
    std::vector<size_t> owner;
    int64_t rows = 0;
    for (size_t i = 0; i < count && rows < options_.max_batch; ++i) {
      if (!active[i]) continue;
      const SeqBatch& s = batch[i];
      if (s.cancel.raised()) {
        active[i] = false;
        results[i].error = cancelled;
        continue;
      }
      const int64_t b = std::min<int64_t>(options_.max_batch - rows, s.n - done[i]);
      float* logits = nullptr;
      if (done[i] + b == s.n && s.logits) {
        results[i].logits.resize(static_cast<size_t>(model_.hparams().n_vocab));
        logits = results[i].logits.data();
      }
      segs.push_back({s.tokens + done[i], b, s.table, s.start_pos + done[i], logits, s.cancel});
      owner.push_back(i);
      rows += b;
    }
    if (segs.empty()) return results;
    try {
      Forward(segs);
    } catch (const Error& e) {
      if (e.code() != code::kCancelled) throw;
      for (size_t i : owner) {
        results[i] = SeqResult{{}, ErrorInfo{e.code(), e.what(), 0, {}}};
        active[i] = false;
      }
    }
    for (size_t k = 0; k < segs.size(); ++k) {
      const size_t i = owner[k];
      if (!active[i]) continue;
      done[i] += segs[k].n;
      if (done[i] == batch[i].n) active[i] = false;
    }
  }
}

std::vector<float> Session::Prefill(const std::vector<int32_t>& tokens, const BlockTable& table, int64_t start_pos,
                                    CancelFlag cancel) {
  SeqBatch seq{tokens.data(), static_cast<int64_t>(tokens.size()), &table, start_pos, true, cancel};
  std::vector<SeqResult> r = Step({seq});
  if (!r[0].error.ok()) throw Error(r[0].error.code, r[0].error.message);
  return std::move(r[0].logits);
}

std::vector<float> Session::Decode(int32_t token, const BlockTable& table, int64_t pos, CancelFlag cancel) {
  return Prefill(std::vector<int32_t>{token}, table, pos, cancel);
}

}  // namespace kvf::engine
