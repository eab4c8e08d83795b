// Prefill and decode throughput of the reference engine on a GGUF model (a timing harness, not a test):
//   engine_bench <model.gguf> [threads=2] [prompt_tokens=128] [decode_tokens=64] [tokens_per_block=32]
// Prints a table and one JSON line. The prompt is fixed pseudo-random token ids; decode is greedy.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/model.h"
#include "engine/session.h"

using namespace kvf::engine;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: engine_bench <model.gguf> [threads] [prompt_tokens] [decode_tokens] [tokens_per_block]\n");
    return 2;
  }
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const int n_prompt = argc > 3 ? std::atoi(argv[3]) : 128;
  const int n_decode = argc > 4 ? std::atoi(argv[4]) : 64;
  const int tpb = argc > 5 ? std::atoi(argv[5]) : 32;
  try {
    auto model = Model::Load(argv[1]);
    const LlamaHparams& hp = model->hparams();
    const KvLayout layout = KvLayoutFor(*model, tpb);
    const int64_t blocks = layout.BlocksFor(n_prompt + n_decode);
    std::vector<uint8_t> mem(static_cast<size_t>(blocks) * layout.block_bytes());
    KvPool pool(layout, mem.data(), mem.size());
    BlockTable table;
    pool.Reserve(table, n_prompt + n_decode);
    Session s(*model, pool, SessionOptions{threads, 512});

    std::vector<int32_t> prompt;
    uint32_t x = 42;
    for (int i = 0; i < n_prompt; ++i) {
      x = x * 1103515245u + 12345u;
      prompt.push_back(static_cast<int32_t>((x >> 8) % static_cast<uint32_t>(hp.n_vocab)));
    }
    using Clock = std::chrono::steady_clock;
    auto t0 = Clock::now();
    std::vector<float> logits = s.Prefill(prompt, table, 0);
    auto t1 = Clock::now();
    int64_t pos = n_prompt;
    for (int i = 0; i < n_decode; ++i) logits = s.Decode(Argmax(logits), table, pos++);
    auto t2 = Clock::now();
    const double prefill_s = std::chrono::duration<double>(t1 - t0).count();
    const double decode_s = std::chrono::duration<double>(t2 - t1).count();
    std::printf("model      %s\nthreads    %d\nprefill    %d tokens  %.3f s  %.1f tok/s\ndecode     %d tokens  %.3f s  %.1f tok/s\n",
                argv[1], s.threads(), n_prompt, prefill_s, n_prompt / prefill_s, n_decode, decode_s, n_decode / decode_s);
    std::printf("attention  %.3f s, matmul %.3f s (prefill and decode together)\n", s.timings().attention_ns * 1e-9,
                s.timings().matmul_ns * 1e-9);
    std::printf("{\"threads\":%d,\"prompt_tokens\":%d,\"prefill_tok_s\":%.2f,\"decode_tokens\":%d,\"decode_tok_s\":%.2f}\n",
                s.threads(), n_prompt, n_prompt / prefill_s, n_decode, n_decode / decode_s);
  } catch (const kvf::Error& e) {
    std::fprintf(stderr, "%s: %s\n", e.code().c_str(), e.what());
    return 1;
  }
  return 0;
}
