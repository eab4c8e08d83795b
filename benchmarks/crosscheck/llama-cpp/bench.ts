// Prefill and decode speed: kvfabric's ReferenceEngine vs llama.cpp (node-llama-cpp), same GGUF, same token
// ids, same thread count, in the same process, best of N.
//
//   prefill: a --prompt-token prompt (our tokenizer, the same ids for both) from position 0, ending with the
//            last token's logits (llama.cpp: controlledEvaluate with generateNext on the last token).
//   decode:  --decode-tokens greedy tokens after it, one forward pass each (llama.cpp: controlledEvaluate of one
//            token with generateNext {token}, i.e. llama.cpp's greedy sampler; ours: decode() + argmax in JS).
//
// Both at each prompt length of a sweep, in one run, with the ratio per length and, for ours, the share of
// the time spent in attention and in matrix products (the engine's timing counters).
//
//   node --import tsx benchmarks/crosscheck/llama-cpp/bench.ts [--model PATH] [--threads 2] [--reps 3]
//        [--reps-long 1] [--prompt-tokens 128,512,1024,2048,4096,8192] [--decode-tokens 64] [--context N]
//        [--out benchmarks/out/engine-bench.json]
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { getLlama, LlamaLogLevel, type Token } from 'node-llama-cpp';

import { describeMachine } from '../../lib/machine.js';
import { measured as measuredRun, waitQuiet } from '../../lib/quiet.js';
import { ReferenceEngine } from '../../../src/engine/engine.js';
import { SMOLLM2_FILE, modelCacheDir } from '../../../src/serve/default-model.js';
import { readGgufMetadata } from '../../../src/engine/gguf-metadata.js';
import { argmax } from '../../../src/engine/sampling.js';
import { Tokenizer } from '../../../src/engine/tokenizer.js';

const here = dirname(new URL(import.meta.url).pathname);
const repoRoot = resolve(here, '../../..');

const { values: args } = parseArgs({
  options: {
    model: { type: 'string', default: join(modelCacheDir(), SMOLLM2_FILE) },
    threads: { type: 'string', default: '2' },
    // Repetitions per prompt length (best of), and for lengths >= 2048, whose prefill takes seconds.
    reps: { type: 'string', default: '3' },
    'reps-long': { type: 'string', default: '1' },
    // Comma-separated; each is capped at the context minus --decode-tokens (SmolLM2's context is 8192, so
    // "8192" runs as 8128 with 64 decode tokens).
    'prompt-tokens': { type: 'string', default: '128,512,1024,2048,4096,8192' },
    'decode-tokens': { type: 'string', default: '64' },
    // Context of both engines (llama.cpp's context size; our pool's blocks): default the model's context_length.
    context: { type: 'string' },
    out: { type: 'string', default: join(repoRoot, 'benchmarks', 'out', 'engine-bench.json') },
    // Diagnostics: time one engine only (the other is still loaded).
    only: { type: 'string' },
    // Before each prompt length: wait up to this long for other processes to leave the cores.
    'max-wait-s': { type: 'string', default: '120' },
  },
});
const modelPath = args.model!;
const threads = Number(args.threads);
const decodeTokens = Number(args['decode-tokens']);
// Positions per forward pass in both engines: llama.cpp's batch size, our engine's max batch (SessionOptions).
const batch = 512;

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
const modelContext = meta.getInt('llama.context_length');
const ctxSize = args.context !== undefined ? Number(args.context) : modelContext;
if (!(ctxSize > decodeTokens && ctxSize <= modelContext)) throw new Error(`--context must be in (${decodeTokens}, ${modelContext}]`);
const lengths = [...new Set(args['prompt-tokens']!.split(',').map((x) => Math.min(Number(x), ctxSize - decodeTokens)))];
const textIds = tokenizer.encode(TEXT, { addBos: false });
function promptOf(length: number): number[] {
  let p = textIds;
  while (p.length < length) p = p.concat(p);
  return p.slice(0, length);
}

const nlcVersion = (JSON.parse(readFileSync(join(here, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')) as { version: string }).version;
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const lmodel = await llama.loadModel({ modelPath });
const lctx = await lmodel.createContext({ contextSize: ctxSize, batchSize: batch, threads, sequences: 1 });
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
  /** Ours only: seconds in attention and in matrix products, prefill and decode (engine.timings). */
  attentionS?: { prefill: number; decode: number };
  matmulS?: { prefill: number; decode: number };
  /** CPU (in cores) used by other processes while this run went on: /proc/stat busy time minus ours. */
  foreignCores?: number;
}

// Other processes on a small machine (tests running beside us) change the numbers a lot — llama.cpp's
// spinning thread barrier suffers most when its threads are descheduled — so each run records how much CPU
// everything else took, and the program waits (up to --max-wait-s) for a quiet machine before it starts.
async function measured(fn: () => Promise<Run>): Promise<Run> {
  const m = await measuredRun(fn);
  return { ...m.result, foreignCores: m.foreignCores };
}

async function runOurs(prompt: number[]): Promise<Run> {
  const c0 = engine.timings;
  let t0 = performance.now();
  let logits = await engine.prefill(prompt, blocks, 0);
  const prefillMs = performance.now() - t0;
  const c1 = engine.timings;
  const tokens: number[] = [];
  t0 = performance.now();
  for (let k = 0; k < decodeTokens; k++) {
    const t = argmax(logits);
    tokens.push(t);
    logits = await engine.decode(t, blocks, prompt.length + k);
  }
  const decodeMs = performance.now() - t0;
  const c2 = engine.timings;
  return {
    prefillMs,
    decodeMs,
    tokens,
    attentionS: { prefill: c1.attentionSeconds - c0.attentionSeconds, decode: c2.attentionSeconds - c1.attentionSeconds },
    matmulS: { prefill: c1.matmulSeconds - c0.matmulSeconds, decode: c2.matmulSeconds - c1.matmulSeconds },
  };
}

const greedy = { generateNext: { token: true, options: { temperature: 0 } } } as const;
async function runLlama(prompt: number[]): Promise<Run> {
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

// Warm-up (page in weights, spin up thread pools) at the first length, then per length interleave the engines.
const doOurs = args.only === undefined || args.only === 'ours';
const doLlama = args.only === undefined || args.only === 'llama';
const skipped: Run = { prefillMs: NaN, decodeMs: NaN, tokens: [] };
if (doOurs) await runOurs(promptOf(lengths[0]!));
if (doLlama) await runLlama(promptOf(lengths[0]!));

interface LengthResult {
  promptTokens: number;
  reps: number;
  idleForeignCores: number;
  kvfabric: ReturnType<typeof best>;
  llamaCpp: ReturnType<typeof best>;
  ratio: { prefill: number; decode: number };
  /** Share of our prefill / decode wall time spent in attention and in matrix products (best run). */
  kvfabricShares: { prefillAttention: number; prefillMatmul: number; decodeAttention: number; decodeMatmul: number };
  greedyIdenticalTokens: number;
}
function best(runs: Run[], promptTokens: number) {
  const bestPrefill = runs.reduce((a, b) => (b.prefillMs < a.prefillMs ? b : a));
  const bestDecode = runs.reduce((a, b) => (b.decodeMs < a.decodeMs ? b : a));
  return {
    prefillTokPerS: (promptTokens * 1000) / bestPrefill.prefillMs,
    decodeTokPerS: (decodeTokens * 1000) / bestDecode.decodeMs,
    prefillMs: runs.map((r) => r.prefillMs),
    decodeMs: runs.map((r) => r.decodeMs),
    foreignCores: runs.map((r) => r.foreignCores ?? NaN),
    bestPrefill,
    bestDecode,
  };
}

const results: LengthResult[] = [];
for (const length of lengths) {
  const prompt = promptOf(length);
  const reps = Number(length >= 2048 ? args['reps-long'] : args.reps);
  const idleForeignCores = await waitQuiet(Number(args['max-wait-s']));
  const ours: Run[] = [];
  const theirs: Run[] = [];
  for (let r = 0; r < reps; r++) {
    ours.push(doOurs ? await measured(() => runOurs(prompt)) : skipped);
    theirs.push(doLlama ? await measured(() => runLlama(prompt)) : skipped);
  }
  const o = best(ours, length);
  const l = best(theirs, length);
  let same = 0;
  while (same < decodeTokens && ours[0]!.tokens[same] === theirs[0]!.tokens[same]) same++;
  const share = (part: number | undefined, ms: number) => ((part ?? NaN) * 1000) / ms;
  results.push({
    promptTokens: length,
    reps,
    idleForeignCores,
    kvfabric: o,
    llamaCpp: l,
    ratio: { prefill: o.prefillTokPerS / l.prefillTokPerS, decode: o.decodeTokPerS / l.decodeTokPerS },
    kvfabricShares: {
      prefillAttention: share(o.bestPrefill.attentionS?.prefill, o.bestPrefill.prefillMs),
      prefillMatmul: share(o.bestPrefill.matmulS?.prefill, o.bestPrefill.prefillMs),
      decodeAttention: share(o.bestDecode.attentionS?.decode, o.bestDecode.decodeMs),
      decodeMatmul: share(o.bestDecode.matmulS?.decode, o.bestDecode.decodeMs),
    },
    greedyIdenticalTokens: same,
  });
  const last = results[results.length - 1]!;
  console.log(
    `prompt ${length}: prefill ${o.prefillTokPerS.toFixed(1)} vs ${l.prefillTokPerS.toFixed(1)} tok/s (${last.ratio.prefill.toFixed(3)}), ` +
      `decode ${o.decodeTokPerS.toFixed(1)} vs ${l.decodeTokPerS.toFixed(1)} tok/s (${last.ratio.decode.toFixed(3)})`,
  );
}

const machine = describeMachine();
console.log(`machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
console.log(`model: ${modelPath}`);
console.log(`node-llama-cpp ${nlcVersion} (llama.cpp ${llama.llamaCppRelease.repo}@${llama.llamaCppRelease.release}, ${llama.buildType}, gpu ${String(llama.gpu)})`);
console.log(`threads ${threads}, context ${ctxSize}, batch ${batch}, decode ${decodeTokens} tokens, best of ${args.reps} (prompts >= 2048: ${args['reps-long']}), KV f16 in both\n`);
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const f1 = (x: number) => x.toFixed(1);
console.log('| prompt | prefill tok/s kvfabric | llama.cpp | ratio | decode tok/s kvfabric | llama.cpp | ratio | kvfabric prefill: attention / matmul | decode: attention / matmul | same greedy tokens | other processes (cores) |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|');
for (const r of results) {
  const s = r.kvfabricShares;
  const foreign = Math.max(...r.kvfabric.foreignCores, ...r.llamaCpp.foreignCores, r.idleForeignCores);
  console.log(
    `| ${r.promptTokens} | ${f1(r.kvfabric.prefillTokPerS)} | ${f1(r.llamaCpp.prefillTokPerS)} | **${r.ratio.prefill.toFixed(2)}** | ` +
      `${f1(r.kvfabric.decodeTokPerS)} | ${f1(r.llamaCpp.decodeTokPerS)} | **${r.ratio.decode.toFixed(2)}** | ` +
      `${pct(s.prefillAttention)} / ${pct(s.prefillMatmul)} | ${pct(s.decodeAttention)} / ${pct(s.decodeMatmul)} | ${r.greedyIdenticalTokens}/${decodeTokens} | ≤ ${foreign.toFixed(2)} |`,
  );
}

mkdirSync(dirname(args.out!), { recursive: true });
const strip = ({ bestPrefill: _p, bestDecode: _d, ...rest }: ReturnType<typeof best>) => rest;
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
      context: ctxSize,
      batch,
      decodeTokens,
      results: results.map((r) => ({ ...r, kvfabric: strip(r.kvfabric), llamaCpp: strip(r.llamaCpp) })),
    },
    null,
    2,
  ) + '\n',
);
console.log(`wrote ${args.out}`);

await engine.close();
await lctx.dispose();
await lmodel.dispose();
await llama.dispose();
