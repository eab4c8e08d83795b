// Serving benchmark: time to first token, inter-token latency and throughput at several concurrencies, for
// the disaggregated stack (1 prefill + 1 decode worker, KV pulled over the fabric) beside the aggregated
// baseline with the same compute (2 workers that each prefill and decode locally). Worker processes are
// started through the real CLI; the frontend runs here; requests are streamed chat completions over HTTP.
// Beside each level, the decode workers' own engine time over it (their step counters): the mean decode step is
// the floor under ITL, so ITL p50 / step says what serving adds per token. Prints tables and writes JSON.
//
//   npm run bench:serving -- [--model path] [--provider tcp|shm] [--concurrency 1,4,16] [--max-tokens 32] [--threads 1]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import type { ServeMode } from '../src/serve/config.js';
import { defaultModelPath } from '../src/serve/default-model.js';
import { engineLevel, readEngine } from './lib/engine-time.js';
import { loadLevel, streamOne } from './lib/load.js';
import { describeMachine } from './lib/machine.js';
import { withStack } from './lib/stack.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    provider: { type: 'string', default: 'tcp' },
    concurrency: { type: 'string', default: '1,4,16' },
    'max-tokens': { type: 'string', default: '32' },
    'min-requests': { type: 'string', default: '8' },
    // Engine threads per worker (the workers share this machine's cores with each other and with the frontend).
    threads: { type: 'string', default: '1' },
    out: { type: 'string', default: join(here, 'out', 'serving.json') },
  },
});
const model = values.model ?? defaultModelPath();
const provider = values.provider!;
const levels = values.concurrency!.split(',').map(Number);
const maxTokens = Number(values['max-tokens']);
const minRequests = Number(values['min-requests']);
const modelName = model
  .split('/')
  .pop()!
  .replace(/\.gguf$/, '');

function runMode(mode: ServeMode) {
  return withStack({ model, provider, mode, extra: ['--blocks', '512', '--threads', values.threads!] }, async (url) => {
    const load = { url, modelName, maxTokens };
    await streamOne(load, 0); // warm-up
    const rows = [];
    let before = await readEngine(url);
    for (const c of levels) {
      const level = await loadLevel(load, c, Math.max(minRequests, 2 * c));
      const after = await readEngine(url);
      rows.push({ mode, ...level, engine: engineLevel(before, after) });
      before = after;
      process.stderr.write(`${mode} c=${c} done\n`);
    }
    return rows;
  });
}

const disaggregated = await runMode(provider === 'none' ? 'aggregated' : 'pull');
const aggregated = await runMode('aggregated');
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
console.log(
  `\nServing: ${modelName}, provider ${provider}, max_tokens ${maxTokens}, ${values.threads} engine thread(s) per worker, greedy, streamed chat completions`,
);
console.log('| mode | concurrency | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | output tok/s | req/s | KV bytes/req |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const r of [...disaggregated, ...aggregated]) {
  console.log(
    `| ${r.mode === 'pull' ? 'disaggregated (1P+1D, pull)' : 'aggregated (2 workers)'} | ${r.concurrency} | ${r.requests} | ${f(r.ttftP50Ms)} | ${f(r.ttftP99Ms)} | ${f(r.itlP50Ms)} | ${f(r.itlP99Ms)} | ${f(r.outputTokensPerS)} | ${f(r.requestsPerS, 2)} | ${f(r.kvBytesPerRequest, 0)} |`,
  );
}
console.log("\nEngine time on the decode workers over each level (the engine's own clock); ITL p50 / decode step is what serving adds");
console.log('| mode | concurrency | decode step ms | ITL p50 / decode step | all steps ms | thread hand-off ms/step | sequences/step | tokens/step |');
console.log('|---|---|---|---|---|---|---|---|');
for (const r of [...disaggregated, ...aggregated]) {
  const e = r.engine;
  console.log(
    `| ${r.mode === 'pull' ? 'disaggregated' : 'aggregated'} | ${r.concurrency} | ${f(e.decodeStepMs, 2)} | ${f(r.itlP50Ms / e.decodeStepMs, 3)} | ${f(e.stepMs, 2)} | ${f(e.handOffMs, 3)} | ${f(e.sequencesPerStep, 2)} | ${f(e.tokensPerStep, 2)} |`,
  );
}
for (const r of [...disaggregated, ...aggregated].filter((x) => x.concurrency === 1)) {
  const ratio = r.itlP50Ms / r.engine.decodeStepMs;
  console.log(`${r.mode}: streamed ITL p50 at concurrency 1 = ${f(r.itlP50Ms, 2)} ms = ${f(ratio, 3)}x the engine's decode step (goal <= 1.2x)`);
}
console.log('\n| concurrency | TTFT p50 ratio (disagg/agg) | ITL p50 ratio | throughput ratio |');
console.log('|---|---|---|---|');
for (const d of disaggregated) {
  const a = aggregated.find((r) => r.concurrency === d.concurrency)!;
  console.log(
    `| ${d.concurrency} | ${f(d.ttftP50Ms / a.ttftP50Ms, 2)} | ${f(d.itlP50Ms / a.itlP50Ms, 2)} | ${f(d.outputTokensPerS / a.outputTokensPerS, 2)} |`,
  );
}
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify({ machine: describeMachine(), model, provider, maxTokens, threads: Number(values.threads), disaggregated, aggregated }, null, 2),
);
console.log(`\nwrote ${values.out}`);
