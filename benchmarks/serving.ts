// Serving benchmark: time to first token, inter-token latency and throughput at several concurrencies, for
// the disaggregated stack (1 prefill + 1 decode worker, KV pulled over the fabric) beside the aggregated
// baseline with the same compute (2 workers that each prefill and decode locally). Worker processes are
// started through the real CLI; the frontend runs here; requests are streamed chat completions over HTTP.
// Prints a table and writes JSON.
//
//   npm run bench:serving -- [--model path] [--provider tcp|shm] [--concurrency 1,4,16] [--max-tokens 32]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { frontendConfig, type ServeMode } from '../src/serve/config.js';
import { defaultModelPath } from '../src/serve/default-model.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLUSTER, quietLog, startWorker, stop, type Proc } from '../test/helpers/serve.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    provider: { type: 'string', default: 'tcp' },
    concurrency: { type: 'string', default: '1,4,16' },
    'max-tokens': { type: 'string', default: '32' },
    'min-requests': { type: 'string', default: '8' },
    out: { type: 'string', default: join(here, 'out', 'serving.json') },
  },
});
const model = values.model ?? defaultModelPath();
const provider = values.provider!;
const levels = values.concurrency!.split(',').map(Number);
const maxTokens = Number(values['max-tokens']);
const minRequests = Number(values['min-requests']);
const modelName = model.split('/').pop()!.replace(/\.gguf$/, '');

const QUESTIONS = [
  'What is the capital of France?',
  'Describe the color of the sky on a clear day.',
  'Name three fruits that are red.',
  'Why do cats purr? Answer briefly.',
  'Write one sentence about the ocean.',
  'What is two plus two?',
  'Give me a short tip for learning to cook, with an example of a simple dish to start with.',
  'Explain in a few words what a computer does.',
];

interface Sample {
  ttftMs: number;
  /** Mean gap between tokens after the first. */
  itlMs: number | undefined;
  tokens: number;
  kvBytes: number;
}

async function streamOne(url: string, question: string): Promise<Sample> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: modelName, messages: [{ role: 'user', content: question }], max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let first: number | undefined;
  let last = started;
  let tokens = 0;
  let kvBytes = 0;
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const bytes of res.body) {
    buffered += decoder.decode(bytes as Uint8Array, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end).replace(/^data: /, '');
      buffered = buffered.slice(end + 2);
      if (event === '[DONE]') continue;
      const chunk = JSON.parse(event) as { error?: { message: string }; choices: { delta?: { content?: string } }[]; usage?: { completion_tokens: number }; kvfabric?: { bytes: number } };
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.choices[0]?.delta?.content) {
        const now = performance.now();
        first ??= now;
        last = now;
      }
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
      if (chunk.kvfabric) kvBytes = chunk.kvfabric.bytes;
    }
  }
  const ttftMs = (first ?? last) - started;
  return { ttftMs, itlMs: tokens > 1 && first !== undefined ? (last - first) / (tokens - 1) : undefined, tokens, kvBytes };
}

async function level(url: string, concurrency: number) {
  const total = Math.max(minRequests, 2 * concurrency);
  let next = 0;
  const samples: Sample[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) {
        const i = next++;
        samples.push(await streamOne(url, QUESTIONS[i % QUESTIONS.length]!));
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const ttft = samples.map((s) => s.ttftMs).sort((a, b) => a - b);
  const itl = samples.flatMap((s) => (s.itlMs === undefined ? [] : [s.itlMs])).sort((a, b) => a - b);
  const tokens = samples.reduce((n, s) => n + s.tokens, 0);
  return {
    concurrency,
    requests: total,
    ttftP50Ms: pct(ttft, 0.5),
    ttftP99Ms: pct(ttft, 0.99),
    itlP50Ms: pct(itl, 0.5),
    itlP99Ms: pct(itl, 0.99),
    outputTokensPerS: tokens / seconds,
    requestsPerS: total / seconds,
    kvBytesPerRequest: samples.reduce((n, s) => n + s.kvBytes, 0) / total,
  };
}

function pct(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
}

async function runMode(mode: ServeMode) {
  const workers: Proc[] = [];
  const extra = ['--blocks', '512'];
  try {
    if (mode === 'aggregated') {
      for (const id of ['agg-0', 'agg-1']) workers.push(await startWorker('decode', { model, provider, id, extra }));
    } else {
      workers.push(await startWorker('prefill', { model, provider, id: 'prefill-0', extra }));
      workers.push(await startWorker('decode', { model, provider, id: 'decode-0', extra }));
    }
    const byRole = (role: string) => workers.filter((w) => w.ready.role === role).map((w) => w.ready.address);
    const frontend = await Frontend.start(
      frontendConfig({ flags: { ...CLUSTER, model, listen: '127.0.0.1:0', prefill: byRole('prefill'), decode: byRole('decode'), mode, healthIntervalMs: 500 }, env: {} }),
      quietLog,
    );
    try {
      await frontend.workersReady(mode === 'aggregated' ? ['decode'] : ['prefill', 'decode']);
      await streamOne(frontend.url, QUESTIONS[0]!); // warm-up
      const rows = [];
      for (const c of levels) {
        rows.push({ mode, ...(await level(frontend.url, c)) });
        process.stderr.write(`${mode} c=${c} done\n`);
      }
      return rows;
    } finally {
      await frontend.close();
    }
  } finally {
    await Promise.all(workers.map(stop));
  }
}

const disaggregated = await runMode(provider === 'none' ? 'aggregated' : 'pull');
const aggregated = await runMode('aggregated');
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
console.log(`\nServing: ${modelName}, provider ${provider}, max_tokens ${maxTokens}, greedy, streamed chat completions`);
console.log('| mode | concurrency | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | output tok/s | req/s | KV bytes/req |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const r of [...disaggregated, ...aggregated]) {
  console.log(`| ${r.mode === 'pull' ? 'disaggregated (1P+1D, pull)' : 'aggregated (2 workers)'} | ${r.concurrency} | ${r.requests} | ${f(r.ttftP50Ms)} | ${f(r.ttftP99Ms)} | ${f(r.itlP50Ms)} | ${f(r.itlP99Ms)} | ${f(r.outputTokensPerS)} | ${f(r.requestsPerS, 2)} | ${f(r.kvBytesPerRequest, 0)} |`);
}
console.log('\n| concurrency | TTFT p50 ratio (disagg/agg) | ITL p50 ratio | throughput ratio |');
console.log('|---|---|---|---|');
for (const d of disaggregated) {
  const a = aggregated.find((r) => r.concurrency === d.concurrency)!;
  console.log(`| ${d.concurrency} | ${f(d.ttftP50Ms / a.ttftP50Ms, 2)} | ${f(d.itlP50Ms / a.itlP50Ms, 2)} | ${f(d.outputTokensPerS / a.outputTokensPerS, 2)} |`);
}
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, JSON.stringify({ machine: describeMachine(), model, provider, maxTokens, disaggregated, aggregated }, null, 2));
console.log(`\nwrote ${values.out}`);
