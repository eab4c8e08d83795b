// Prefix cache benchmark: a multi-turn chat workload — N users sharing a long system prompt, each holding a
// conversation of several turns (every turn sends the whole history) — against 2 prefill + 2 decode workers, run
// twice in one go: KV-aware routing with the prefix cache on, and round-robin routing with it off (the baseline).
// Worker processes start through the real CLI; the frontend runs here; requests are streamed chat completions.
// Prints a table and writes JSON.
//
//   npm run bench:prefix -- [--model path] [--users 32] [--turns 4] [--system-tokens 500] [--max-tokens 8]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { frontendConfig } from '../src/serve/config.js';
import { defaultModelPath } from '../src/serve/default-model.js';
import type { KvProof } from '../src/serve/flow.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLUSTER, health, quietLog, startWorker, stop, type Proc } from '../test/helpers/serve.js';
import { percentile, QUESTIONS, sseChunks } from './lib/load.js';
import { describeMachine } from './lib/machine.js';
import { measured, waitQuiet } from './lib/quiet.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    provider: { type: 'string', default: 'tcp' },
    users: { type: 'string', default: '32' },
    turns: { type: 'string', default: '4' },
    'system-tokens': { type: 'string', default: '500' },
    'max-tokens': { type: 'string', default: '8' },
    blocks: { type: 'string', default: '768' },
    out: { type: 'string', default: join(here, 'out', 'prefix-cache.json') },
  },
});
const model = values.model ?? defaultModelPath();
const provider = values.provider!;
const users = Number(values.users);
const turns = Number(values.turns);
const maxTokens = Number(values['max-tokens']);
const TPB = 32;
const modelName = model
  .split('/')
  .pop()!
  .replace(/\.gguf$/, '');

// A system prompt of about --system-tokens tokens (about 1.3 tokens a word in English for these tokenizers).
const RULES = [
  'You are a helpful assistant for a travel company.',
  'Answer in one or two short sentences, politely, and never invent prices.',
  'When a customer asks about a booking, ask for the booking reference first.',
  'Refunds are possible up to fourteen days before departure; after that, offer a voucher.',
  'Mention the loyalty programme only when the customer asks about discounts.',
  'Do not discuss competitors, politics, or the weather forecast beyond the next three days.',
];
const SYSTEM = Array.from({ length: Math.ceil(Number(values['system-tokens']) / 1.3 / 12) }, (_, i) => `${i + 1}. ${RULES[i % RULES.length]}`).join(' ');

// Both configurations queue: no request may time out or fall back for waiting (the comparison is of the same work).
const LONG = { requestTimeoutMs: 1_200_000, prefillTimeoutMs: 1_200_000 };

interface Turn {
  ttftMs: number;
  tokens: number;
  proof: KvProof;
}

/** One streamed chat completion of a conversation so far; the reply text is appended to it. */
async function turn(url: string, messages: { role: string; content: string }[]): Promise<Turn> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: modelName, messages, max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let first: number | undefined;
  let text = '';
  let tokens = 0;
  let proof: KvProof | undefined;
  for await (const chunk of sseChunks(res.body)) {
    if (chunk === 'done') continue;
    if (chunk.error) throw new Error(chunk.error.message);
    const piece = chunk.choices[0]?.delta?.content;
    if (piece) {
      first ??= performance.now();
      text += piece;
    }
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (chunk.kvfabric) proof = chunk.kvfabric as unknown as KvProof;
  }
  messages.push({ role: 'assistant', content: text });
  return { ttftMs: (first ?? performance.now()) - started, tokens, proof: proof! };
}

/** Every user's conversation, all users at once, each turn after the previous reply. */
async function workload(url: string): Promise<Turn[]> {
  const done: Turn[] = [];
  await Promise.all(
    Array.from({ length: users }, async (_, u) => {
      const messages = [{ role: 'system', content: SYSTEM }];
      for (let t = 0; t < turns; t++) {
        messages.push({ role: 'user', content: `I am customer ${u + 1}. ${QUESTIONS[(u + t) % QUESTIONS.length]}` });
        done.push(await turn(url, messages));
      }
    }),
  );
  return done;
}

async function runConfig(name: string, kv: boolean) {
  const extra = ['--blocks', values.blocks!, '--tokens-per-block', String(TPB), '--prefix-cache', kv ? 'on' : 'off', '--max-queue-ms', '600000'];
  const workers: Proc[] = [];
  try {
    for (const role of ['prefill', 'decode'] as const)
      for (const i of [0, 1]) workers.push(await startWorker(role, { model, provider, id: `${role}-${i}`, extra }));
    const byRole = (role: string) => workers.filter((w) => w.ready.role === role).map((w) => w.ready.address);
    const frontend = await Frontend.start(
      frontendConfig({
        flags: {
          ...CLUSTER,
          model,
          listen: '127.0.0.1:0',
          prefill: byRole('prefill'),
          decode: byRole('decode'),
          router: kv ? 'kv' : 'round-robin',
          healthIntervalMs: 500,
          maxInflight: 256,
          ...LONG,
        },
        env: {},
      }),
      quietLog,
    );
    try {
      await frontend.workersReady(['prefill', 'decode']);
      // Warm-up with an unrelated prompt (it shares no prefix with the workload).
      await turn(frontend.url, [{ role: 'user', content: 'Hello.' }]);
      const quiet = await waitQuiet(60);
      // The workers are other processes too: what `measured` calls foreign CPU is theirs and other agents' together.
      const { result, foreignCores, wallMs } = await measured(() => workload(frontend.url));
      const stats = await Promise.all(workers.map((w) => health(w.ready.address)));
      return summarize(name, result, wallMs, foreignCores, quiet, stats);
    } finally {
      await frontend.close();
    }
  } finally {
    await Promise.all(workers.map(stop));
  }
}

function summarize(name: string, turns: Turn[], wallMs: number, foreignCores: number, quietBefore: number, stats: Awaited<ReturnType<typeof health>>[]) {
  const ttft = turns.map((t) => t.ttftMs).sort((a, b) => a - b);
  const tokens = turns.reduce((n, t) => n + t.tokens, 0);
  const bytes = turns.reduce((n, t) => n + t.proof.bytes, 0);
  // Prompt blocks the worker that prefilled found cached (not computed), over the prompt blocks looked up there.
  const lookups = stats.reduce((n, s) => n + s.cacheLookups, 0);
  const hits = stats.reduce((n, s) => n + s.cacheHits, 0);
  const modes: Record<string, number> = {};
  for (const t of turns) modes[t.proof.mode] = (modes[t.proof.mode] ?? 0) + 1;
  return {
    config: name,
    requests: turns.length,
    ttftP50Ms: percentile(ttft, 0.5),
    ttftP99Ms: percentile(ttft, 0.99),
    outputTokensPerS: tokens / (wallMs / 1000),
    requestsPerS: turns.length / (wallMs / 1000),
    cacheHitRate: lookups ? hits / lookups : 0,
    kvBytesMoved: bytes,
    prefillReusedBytes: turns.reduce((n, t) => n + t.proof.prefill_reused_bytes, 0),
    decodeReusedBytes: turns.reduce((n, t) => n + t.proof.decode_reused_bytes, 0),
    modes,
    wallS: wallMs / 1000,
    foreignCores,
    quietBefore,
  };
}

const kv = await runConfig('kv router + prefix cache', true);
const rr = await runConfig('round-robin, no prefix cache', false);
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const mb = (b: number) => (b / 2 ** 20).toFixed(1);
console.log(
  `\nPrefix cache: ${modelName}, ${users} users × ${turns} turns, system prompt ~${values['system-tokens']} tokens, max_tokens ${maxTokens}, 2 prefill + 2 decode workers, ${provider}, greedy, streamed chat`,
);
console.log(
  '| config | requests | TTFT p50 ms | TTFT p99 ms | output tok/s | req/s | cache hit rate | KV MiB moved | MiB reused (prefill / decode) | prefill on | other load before (cores) |',
);
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of [kv, rr]) {
  const on = Object.entries(r.modes)
    .map(([m, n]) => `${m} ${n}`)
    .join(', ');
  console.log(
    `| ${r.config} | ${r.requests} | ${f(r.ttftP50Ms)} | ${f(r.ttftP99Ms)} | ${f(r.outputTokensPerS)} | ${f(r.requestsPerS, 2)} | ${f(100 * r.cacheHitRate)}% | ${mb(r.kvBytesMoved)} | ${mb(r.prefillReusedBytes)} / ${mb(r.decodeReusedBytes)} | ${on} | ${f(r.quietBefore, 2)} |`,
  );
}
console.log(
  `\nTTFT p50: ${f(rr.ttftP50Ms / kv.ttftP50Ms, 2)}x lower with the kv router and prefix cache; KV bytes moved: ${f(100 * (1 - kv.kvBytesMoved / rr.kvBytesMoved))}% lower`,
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify({ machine: describeMachine(), model, provider, users, turns, maxTokens, systemPrompt: SYSTEM, kv, roundRobin: rr }, null, 2),
);
console.log(`\nwrote ${values.out}`);
