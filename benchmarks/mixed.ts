// What disaggregation is for: decode streams that keep their pace while long prompts arrive. 8 clients stream
// chat completions back to back while a long prompt (≥ 1,000 tokens) arrives every second; each worker process is
// pinned to its own core (taskset, one engine thread each): 1 prefill + 1 decode worker against 2 aggregated
// workers. Reports the decoding streams' time to first token and the gaps between their tokens (every gap, so the
// stalls a prefill causes show in p99), the long prompts' TTFT, and output tokens/s. Prints a table, writes JSON.
//
//   npm run bench:mixed -- [--model path] [--provider tcp] [--seconds 20] [--streams 8] [--every-ms 1000]
//        [--long-repeat 12] [--max-tokens 48] [--short-prompt-tokens 256] [--out benchmarks/out/mixed.json]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import type { ServeMode } from '../src/serve/config.js';
import { defaultModelPath } from '../src/serve/default-model.js';
import { QUESTIONS, percentile, sseChunks } from './lib/load.js';
import { describeMachine } from './lib/machine.js';
import { procBusySeconds } from './lib/quiet.js';
import { withStack } from './lib/stack.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    provider: { type: 'string', default: 'tcp' },
    seconds: { type: 'string', default: '20' },
    streams: { type: 'string', default: '8' },
    'every-ms': { type: 'string', default: '1000' },
    'long-repeat': { type: 'string', default: '12' },
    'max-tokens': { type: 'string', default: '48' },
    // Disaggregated: prompts this short are prefilled by the decode worker (conditional disaggregation), so the
    // streams' chats do not queue behind the long prompts at the prefill worker. 0 sends every prompt there.
    'short-prompt-tokens': { type: 'string', default: '256' },
    out: { type: 'string', default: join(here, 'out', 'mixed.json') },
  },
});
const model = values.model ?? defaultModelPath();
const modelName = model
  .split('/')
  .pop()!
  .replace(/\.gguf$/, '');
const seconds = Number(values.seconds);
const streams = Number(values.streams);
const everyMs = Number(values['every-ms']);
const maxTokens = Number(values['max-tokens']);
const shortPromptTokens = Number(values['short-prompt-tokens']);
// About 95 tokens per repeat with SmolLM2's tokenizer: 12 repeats ≈ 1,100 prompt tokens.
const PARAGRAPH =
  'Serving systems split prefill from decode, ship the key-value cache across the network, and schedule requests so ' +
  'that no accelerator sits idle. A long prompt costs the prefill worker many forward passes, while every decoding ' +
  'stream needs one short pass per token; run on the same worker, the long one stalls all the others. ';
const longPrompt = (i: number) => `Document ${i}. ${PARAGRAPH.repeat(Number(values['long-repeat']))}Summarise it in one word.`;

interface Timed {
  ttftMs: number;
  gaps: number[];
  tokens: number;
  promptTokens: number;
  status: number;
}

async function chat(url: string, content: string, max: number): Promise<Timed> {
  const started = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: modelName,
      messages: [{ role: 'user', content }],
      max_tokens: max,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
  if (!res.ok || !res.body) {
    await res.body?.cancel();
    return { ttftMs: NaN, gaps: [], tokens: 0, promptTokens: 0, status: res.status };
  }
  let last: number | undefined;
  let first: number | undefined;
  const gaps: number[] = [];
  let tokens = 0;
  let promptTokens = 0;
  for await (const chunk of sseChunks(res.body)) {
    if (chunk === 'done') continue;
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.choices[0]?.delta?.content) {
      const now = performance.now();
      if (last !== undefined) gaps.push(now - last);
      first ??= now;
      last = now;
    }
    if (chunk.usage) {
      tokens = chunk.usage.completion_tokens;
      promptTokens = (chunk.usage as { prompt_tokens?: number }).prompt_tokens ?? 0;
    }
  }
  return { ttftMs: (first ?? performance.now()) - started, gaps, tokens, promptTokens, status: 200 };
}

function runMode(mode: ServeMode) {
  const pin = (core: number) => ['taskset', '-c', String(core)];
  const frontend = mode === 'aggregated' ? {} : { shortPromptTokens };
  return withStack({ model, provider: values.provider!, mode, extra: ['--blocks', '1024'], prefix: pin, frontend }, async (url) => {
    await chat(url, QUESTIONS[0]!, 4); // warm-up
    const busy0 = procBusySeconds();
    const started = performance.now();
    const end = started + seconds * 1000;
    const decoding: Timed[] = [];
    const long: Timed[] = [];
    const clients = Array.from({ length: streams }, async (_, c) => {
      for (let i = c; performance.now() < end; i += streams) decoding.push(await chat(url, QUESTIONS[i % QUESTIONS.length]!, maxTokens));
    });
    const arrivals: Promise<void>[] = [];
    for (let i = 0; performance.now() + everyMs <= end; i++) {
      arrivals.push(chat(url, longPrompt(i), 4).then((t) => void long.push(t)));
      await new Promise((r) => setTimeout(r, everyMs));
    }
    await Promise.all([...clients, ...arrivals]);
    const wall = (performance.now() - started) / 1000;
    const ok = decoding.filter((t) => t.status === 200);
    const gaps = ok.flatMap((t) => t.gaps).sort((a, b) => a - b);
    const ttft = ok.map((t) => t.ttftMs).sort((a, b) => a - b);
    const longOk = long.filter((t) => t.status === 200);
    const longTtft = longOk.map((t) => t.ttftMs).sort((a, b) => a - b);
    const tokens = ok.reduce((n, t) => n + t.tokens, 0) + longOk.reduce((n, t) => n + t.tokens, 0);
    return {
      mode,
      decodeRequests: ok.length,
      refused: decoding.length - ok.length + long.length - longOk.length,
      ttftP50Ms: percentile(ttft, 0.5),
      ttftP99Ms: percentile(ttft, 0.99),
      itlP50Ms: percentile(gaps, 0.5),
      itlP99Ms: percentile(gaps, 0.99),
      longPrompts: longOk.length,
      longPromptTokens: longOk[0]?.promptTokens ?? 0,
      longTtftP50Ms: percentile(longTtft, 0.5),
      longTtftP99Ms: percentile(longTtft, 0.99),
      outputTokensPerS: tokens / wall,
      machineBusyCores: (procBusySeconds() - busy0) / wall,
    };
  });
}

const disaggregated = await runMode('pull');
const aggregated = await runMode('aggregated');
const machine = describeMachine();
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
console.log(`\nmachine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
console.log(
  `model ${model}; ${streams} streams of ${maxTokens} tokens back to back, a ${disaggregated.longPromptTokens}-token prompt every ${everyMs} ms, ${seconds} s; each worker pinned to one core, 1 engine thread; disaggregated: --short-prompt-tokens ${shortPromptTokens}\n`,
);
console.log('| mode | stream TTFT p50 / p99 ms | stream ITL p50 / p99 ms | long-prompt TTFT p50 / p99 ms | output tok/s | refused | machine busy (cores) |');
console.log('|---|---|---|---|---|---|---|');
for (const r of [disaggregated, aggregated]) {
  const label = r.mode === 'aggregated' ? 'aggregated (2 workers)' : 'disaggregated (1P+1D)';
  console.log(
    `| ${label} | ${f(r.ttftP50Ms)} / ${f(r.ttftP99Ms)} | ${f(r.itlP50Ms)} / ${f(r.itlP99Ms)} | ${f(r.longTtftP50Ms)} / ${f(r.longTtftP99Ms)} | ${f(r.outputTokensPerS)} | ${r.refused} | ${f(r.machineBusyCores, 2)} |`,
  );
}
console.log(
  `\nITL p99 disaggregated / aggregated: ${f(disaggregated.itlP99Ms / aggregated.itlP99Ms, 2)}; throughput ratio: ${f(disaggregated.outputTokensPerS / aggregated.outputTokensPerS, 2)}`,
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify(
    { date: new Date().toISOString(), machine, model, streams, maxTokens, everyMs, seconds, shortPromptTokens, disaggregated, aggregated },
    null,
    2,
  ),
);
console.log(`wrote ${values.out}`);
