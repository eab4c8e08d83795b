// Overload benchmark: the disaggregated stack (prefill, decode and frontend as separate processes, as
// `kvfabric serve` runs them) under closed-loop clients that retry on 429 as the OpenAI clients do. Phase 1 runs
// the concurrency the stack is sized for (`--concurrency`, which is also the frontend's --max-inflight); phase 2
// runs `--factor` times as many clients. Admission control should keep the goodput (output tokens/s of completed
// requests) of phase 2 at ≥ 90% of phase 1's, answer every refused request with a fast 429 and Retry-After, and
// let no accepted request fail or time out. `--soak S` adds S seconds at the sized concurrency, sampling every
// process's RSS: no errors, RSS growth after warm-up ≤ 10%, pools back to baseline. Prints a table, writes JSON,
// exits 1 when a check fails.
//
//   npm run bench:load -- [--model path] [--concurrency 4] [--factor 4] [--duration 60] [--max-tokens 32] [--soak 600]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { defaultModelPath } from '../src/serve/default-model.js';
import { health, poolAtBaseline, startCli, startWorker, stop, type Proc } from '../test/helpers/serve.js';
import { attempt, runPhase, type PhaseResult } from './lib/overload.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    provider: { type: 'string', default: 'tcp' },
    concurrency: { type: 'string', default: '4' },
    factor: { type: 'string', default: '4' },
    duration: { type: 'string', default: '60' },
    'max-tokens': { type: 'string', default: '32' },
    soak: { type: 'string', default: '0' },
    out: { type: 'string', default: join(here, 'out', 'load.json') },
  },
});
const model = values.model ?? defaultModelPath();
const concurrency = Number(values.concurrency);
const factor = Number(values.factor);
const durationMs = Number(values.duration) * 1000;
const soakMs = Number(values.soak) * 1000;
const maxTokens = Number(values['max-tokens']);
const modelName = model
  .split('/')
  .pop()!
  .replace(/\.gguf$/, '');

function rssBytes(pid: number): number {
  const kb = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

/** Runs the soak phase while sampling the processes' RSS; growth is end against the sample at a fifth of it (warm). */
async function soak(target: Parameters<typeof runPhase>[0], procs: Proc[]) {
  const samples: { t: number; rss: number[] }[] = [];
  const sample = () => samples.push({ t: performance.now(), rss: procs.map((p) => rssBytes(p.ready.pid)) });
  sample();
  const timer = setInterval(sample, 5000);
  const { result } = await runPhase(target).finally(() => clearInterval(timer));
  sample();
  const warm = samples.find((s) => s.t >= samples[0]!.t + soakMs / 5) ?? samples[0]!;
  const last = samples.at(-1)!;
  const growth = procs.map((p, i) => ({
    process: p.ready.role,
    warmMiB: warm.rss[i]! / 2 ** 20,
    endMiB: last.rss[i]! / 2 ** 20,
    growthPct: (100 * (last.rss[i]! - warm.rss[i]!)) / warm.rss[i]!,
  }));
  return { result, rss: growth };
}

const extra = ['--blocks', '512'];
const prefill = await startWorker('prefill', { model, provider: values.provider!, id: 'prefill-0', extra });
const decode = await startWorker('decode', { model, provider: values.provider!, id: 'decode-0', extra });
const frontend = await startCli([
  'frontend',
  '--model',
  model,
  '--listen',
  '127.0.0.1:0',
  '--prefill',
  prefill.ready.address,
  '--decode',
  decode.ready.address,
  '--max-inflight',
  String(concurrency),
  '--health-interval-ms',
  '500',
]);
const procs = [frontend, prefill, decode];
let failed: boolean;
try {
  const target = { url: frontend.ready.address, modelName, maxTokens };
  for (let i = 0; i < 3; i++) await attempt(target, i); // warm-up
  const phases: { name: string; result: PhaseResult }[] = [];
  for (const [name, c] of [
    ['sized', concurrency],
    ['overload', factor * concurrency],
  ] as const) {
    phases.push({ name, result: (await runPhase({ ...target, concurrency: c, durationMs })).result });
    process.stderr.write(`${name} (${c} clients) done\n`);
  }
  const soaked = soakMs > 0 ? await soak({ ...target, concurrency, durationMs: soakMs }, procs) : undefined;
  if (soaked) phases.push({ name: 'soak', result: soaked.result });
  await Promise.all([poolAtBaseline(prefill.ready.address), poolAtBaseline(decode.ready.address)]);
  const pools = await Promise.all([health(prefill.ready.address), health(decode.ready.address)]);

  const [sized, overload] = [phases[0]!.result, phases[1]!.result];
  const goodputRatio = overload.goodTokensPerS / sized.goodTokensPerS;
  const clean = (r: PhaseResult) => r.serverErrors + r.streamErrors + r.clientErrors === 0;
  const checks = {
    'no 5xx, error event or timeout in any phase': phases.every((p) => clean(p.result)),
    'every refusal is a 429 with Retry-After': phases.every((p) => p.result.refusedWithoutRetryAfter === 0),
    'no refusal at the sized concurrency': sized.refused === 0,
    [`overload goodput ≥ 90% of the sized concurrency's`]: goodputRatio >= 0.9,
    'pools back to baseline': pools.every((s) => s.freeBlocks === s.totalBlocks && s.heldRequests === 0 && s.queuedTokens === 0 && s.streams === 0),
    ...(soaked ? { 'soak RSS growth after warm-up ≤ 10%': soaked.rss.every((r) => r.growthPct <= 10) } : {}),
  };
  failed = Object.values(checks).includes(false);

  const f = (x: number, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : '-');
  console.log(
    `\nOverload: ${modelName}, ${values.provider}, max_tokens ${maxTokens}, frontend --max-inflight ${concurrency}, ${durationMs / 1000} s per phase`,
  );
  console.log(
    '| phase | clients | sent | completed | refused (429) | 5xx / errors | 429 p50 / p99 ms | completed p50 / p99 ms | goodput tok/s | completed/s |',
  );
  console.log('|---|---|---|---|---|---|---|---|---|---|');
  for (const { name, result: r } of phases) {
    console.log(
      `| ${name} | ${r.concurrency} | ${r.sent} | ${r.completed} | ${r.refused} | ${r.serverErrors} / ${r.streamErrors + r.clientErrors} | ${f(r.refusedP50Ms, 1)} / ${f(r.refusedP99Ms, 1)} | ${f(r.completedP50Ms)} / ${f(r.completedP99Ms)} | ${f(r.goodTokensPerS, 1)} | ${f(r.completedPerS, 2)} |`,
    );
  }
  console.log(`\ngoodput ratio (overload / sized): ${goodputRatio.toFixed(3)}`);
  if (soaked)
    for (const r of soaked.rss)
      console.log(`soak RSS ${r.process}: ${r.warmMiB.toFixed(1)} MiB warm → ${r.endMiB.toFixed(1)} MiB (${r.growthPct.toFixed(1)}%)`);
  for (const [check, ok] of Object.entries(checks)) console.log(`${ok ? 'ok  ' : 'FAIL'} ${check}`);
  mkdirSync(dirname(values.out!), { recursive: true });
  writeFileSync(
    values.out!,
    JSON.stringify(
      {
        machine: describeMachine(),
        model: modelName,
        provider: values.provider,
        maxTokens,
        concurrency,
        factor,
        durationS: durationMs / 1000,
        phases,
        goodputRatio,
        soakRss: soaked?.rss ?? null,
        checks,
      },
      null,
      2,
    ),
  );
  console.log(`\nJSON: ${values.out}`);
} finally {
  await Promise.all(procs.map(stop));
}
process.exit(failed ? 1 : 0);
