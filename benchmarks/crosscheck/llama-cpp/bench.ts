// Prefill and decode speed: kvfabric's ReferenceEngine vs llama.cpp (node-llama-cpp), same GGUF, same token
// ids, same thread count, in the same process, best of N.
//
//   prefill: a --prompt-token prompt (our tokenizer, the same ids for both) from position 0, ending with the
//            last token's logits (llama.cpp: controlledEvaluate with generateNext on the last token).
//   decode:  --decode-tokens greedy tokens after it, one forward pass each (llama.cpp: controlledEvaluate of one
//            token with generateNext {token}, i.e. llama.cpp's greedy sampler; ours: decode() + argmax in JS).
//
//   node --import tsx benchmarks/crosscheck/llama-cpp/bench.ts [--model PATH] [--threads 2] [--reps 3]
//        [--prompt-tokens 128] [--decode-tokens 64] [--out benchmarks/out/engine-bench.json]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { getLlama, LlamaLogLevel, type Token } from 'node-llama-cpp';

import { describeMachine } from '../../lib/machine.js';
import { ReferenceEngine } from '../../../src/engine/engine.js';
import { readGgufMetadata } from '../../../src/engine/gguf-metadata.js';
import { argmax } from '../../../src/engine/sampling.js';
import { Tokenizer } from '../../../src/engine/tokenizer.js';

const here = dirname(new URL(import.meta.url).pathname);
const repoRoot = resolve(here, '../../..');

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: join(process.env.KVF_MODEL_CACHE ?? join(homedir(), '.cache', 'kvfabric', 'models'), 'SmolLM2-135M-Instruct.Q4_1.gguf') },
    threads: { type: 'string', default: '2' },
    reps: { type: 'string', default: '3' },
    'prompt-tokens': { type: 'string', default: '128' },
    'decode-tokens': { type: 'string', default: '64' },
    out: { type: 'string', default: join(repoRoot, 'benchmarks', 'out', 'engine-bench.json') },
    // Diagnostics: time one engine only (the other is still loaded).
    only: { type: 'string' },
    'max-wait-s': { type: 'string', default: '600' },
  },
});
const modelPath = args.model!;
const threads = Number(args.threads);
const reps = Number(args.reps);
const promptTokens = Number(args['prompt-tokens']);
const decodeTokens = Number(args['decode-tokens']);

const TEXT =
  'The history of computing is a story of abstraction layered upon abstraction. Early machines were programmed by ' +
  'rewiring panels and flipping switches; later, stored programs let the same hardware run different tasks. ' +
  'Assembly languages gave names to instructions, compilers translated high-level languages into machine code, ' +
  'and operating systems shared one machine among many users. Networks connected machines into systems larger than ' +
  'any single computer, and the web made those systems reachable from every desk and pocket. Today, large language ' +
  'models run on clusters of accelerators, and the key-value cache that holds their attention state has become a ' +
  'resource to be moved between machines as carefully as any file or database row. Serving systems split prefill ' +
  'from decode, ship the cache across the network, and schedule requests so that no accelerator sits idle.';

const meta = await readGgufMetadata(modelPath);
const tokenizer = Tokenizer.fromGguf(meta);
let prompt = tokenizer.encode(TEXT, { addBos: false });
while (prompt.length < promptTokens) prompt = prompt.concat(prompt);
prompt = prompt.slice(0, promptTokens);

const nlcVersion = (JSON.parse(readFileSync(join(here, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')) as { version: string }).version;
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const lmodel = await llama.loadModel({ modelPath });
const ctxSize = 512;
const lctx = await lmodel.createContext({ contextSize: ctxSize, batchSize: ctxSize, threads, sequences: 1 });
const seq = lctx.getSequence();

const tokensPerBlock = 32;
const numBlocks = Math.ceil(ctxSize / tokensPerBlock);
const engine = new ReferenceEngine({
  modelPath,
  pool: new Uint8Array(numBlocks * ReferenceEngine.blockBytes(modelPath, { tokensPerBlock })),
  tokensPerBlock,
  threads,
});
const blocks = engine.allocateBlocks(numBlocks);

interface Run {
  prefillMs: number;
  decodeMs: number;
  tokens: number[];
  /** CPU (in cores) used by other processes while this run went on: /proc/stat busy time minus ours. */
  foreignCores?: number;
}

// Other processes on a small machine (tests running beside us) change the numbers a lot — llama.cpp's
// spinning thread barrier suffers most when its threads are descheduled — so each run records how much CPU
// everything else took, and the program waits (up to --max-wait-s) for a quiet machine before it starts.
function procBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f as [number, number, number, number, number, number, number, number];
  return (user + nice + system + irq + softirq + (steal ?? 0)) / 100; // USER_HZ = 100 on Linux
}
async function measured(fn: () => Promise<Run>): Promise<Run> {
  const b0 = procBusySeconds();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const run = await fn();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  const foreign = procBusySeconds() - b0 - (c.user + c.system) / 1e6;
  return { ...run, foreignCores: Math.max(0, foreign / wall) };
}
async function waitQuiet(maxWaitS: number): Promise<number> {
  const start = performance.now();
  for (;;) {
    const b0 = procBusySeconds();
    const c0 = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 2000));
    const c = process.cpuUsage(c0);
    const foreign = (procBusySeconds() - b0 - (c.user + c.system) / 1e6) / 2;
    if (foreign < 0.15 || (performance.now() - start) / 1000 > maxWaitS) return foreign;
    console.log(`waiting for a quiet machine: other processes use ${foreign.toFixed(2)} cores`);
  }
}

async function runOurs(): Promise<Run> {
  let t0 = performance.now();
  let logits = await engine.prefill(prompt, blocks, 0);
  const prefillMs = performance.now() - t0;
  const tokens: number[] = [];
  t0 = performance.now();
  for (let k = 0; k < decodeTokens; k++) {
    const t = argmax(logits);
    tokens.push(t);
    logits = await engine.decode(t, blocks, prompt.length + k);
  }
  return { prefillMs, decodeMs: performance.now() - t0, tokens };
}

const greedy = { generateNext: { token: true, options: { temperature: 0 } } } as const;
async function runLlama(): Promise<Run> {
  await seq.clearHistory();
  let t0 = performance.now();
  const input = prompt.map((t, i) => (i === prompt.length - 1 ? ([t as Token, greedy] as const) : (t as Token)));
  const out = await seq.controlledEvaluate(input as Parameters<typeof seq.controlledEvaluate>[0]);
  const prefillMs = performance.now() - t0;
  let next = out[prompt.length - 1]!.next.token!;
  const tokens: number[] = [];
  t0 = performance.now();
  for (let k = 0; k < decodeTokens; k++) {
    tokens.push(next);
    const o = await seq.controlledEvaluate([[next, greedy]]);
    next = o[0]!.next.token!;
  }
  return { prefillMs, decodeMs: performance.now() - t0, tokens };
}

// Warm-up (page in weights, spin up thread pools), then interleave the engines for reps.
const doOurs = args.only === undefined || args.only === 'ours';
const doLlama = args.only === undefined || args.only === 'llama';
const skipped: Run = { prefillMs: NaN, decodeMs: NaN, tokens: [] };
if (doOurs) await runOurs();
if (doLlama) await runLlama();
const ours: Run[] = [];
const theirs: Run[] = [];
const idleForeignCores = await waitQuiet(Number(args['max-wait-s']));
for (let r = 0; r < reps; r++) {
  ours.push(doOurs ? await measured(runOurs) : skipped);
  theirs.push(doLlama ? await measured(runLlama) : skipped);
}

const best = (runs: Run[]) => ({
  prefillTokPerS: Math.max(...runs.map((r) => (promptTokens * 1000) / r.prefillMs)),
  decodeTokPerS: Math.max(...runs.map((r) => (decodeTokens * 1000) / r.decodeMs)),
  prefillMs: runs.map((r) => r.prefillMs),
  decodeMs: runs.map((r) => r.decodeMs),
  foreignCores: runs.map((r) => r.foreignCores ?? NaN),
});
const o = best(ours);
const l = best(theirs);
const ratio = { prefill: o.prefillTokPerS / l.prefillTokPerS, decode: o.decodeTokPerS / l.decodeTokPerS };
let sameGreedy = 0;
while (sameGreedy < decodeTokens && ours[0]!.tokens[sameGreedy] === theirs[0]!.tokens[sameGreedy]) sameGreedy++;

const machine = describeMachine();
console.log(`machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
console.log(`model: ${modelPath}`);
console.log(`node-llama-cpp ${nlcVersion} (llama.cpp ${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}, ${llama.buildType}, gpu ${String(llama.gpu)})`);
console.log(`threads ${threads}, prompt ${promptTokens} tokens, decode ${decodeTokens} tokens, best of ${reps}, KV f16 in both\n`);
console.log('| engine | prefill tok/s | decode tok/s |');
console.log('|---|---|---|');
console.log(`| kvfabric ReferenceEngine | ${o.prefillTokPerS.toFixed(1)} | ${o.decodeTokPerS.toFixed(1)} |`);
console.log(`| llama.cpp (node-llama-cpp ${nlcVersion}) | ${l.prefillTokPerS.toFixed(1)} | ${l.decodeTokPerS.toFixed(1)} |`);
console.log(`| ratio kvfabric / llama.cpp | ${ratio.prefill.toFixed(3)} | ${ratio.decode.toFixed(3)} |`);
console.log(`\n(greedy decode tokens identical for the first ${sameGreedy}/${decodeTokens})`);
const fmt = (xs: number[]) => xs.map((x) => x.toFixed(2)).join(', ');
console.log(`other processes' CPU (cores) before: ${idleForeignCores.toFixed(2)}; during runs: ours [${fmt(o.foreignCores)}], llama.cpp [${fmt(l.foreignCores)}]`);

mkdirSync(dirname(args.out!), { recursive: true });
writeFileSync(
  args.out!,
  JSON.stringify(
    {
      date: new Date().toISOString(),
      machine,
      model: modelPath,
      nodeLlamaCpp: nlcVersion,
      llamaCpp: llama.llamaCppRelease,
      threads,
      reps,
      promptTokens,
      decodeTokens,
      kvfabric: o,
      llamaCpp_: l,
      ratio,
      greedyIdenticalTokens: sameGreedy,
      idleForeignCores,
    },
    null,
    2,
  ).replace('"llamaCpp_"', '"llamaCppResult"') + '\n',
);
console.log(`wrote ${args.out}`);

await engine.close();
await lctx.dispose();
await lmodel.dispose();
await llama.dispose();
