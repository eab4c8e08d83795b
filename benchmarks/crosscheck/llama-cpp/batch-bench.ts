// Batched decoding: decode tokens/s of kvfabric's ReferenceEngine with N sequences in flight (its in-flight
// batching runs their steps as one forward pass) beside llama.cpp decoding N sequences of one context
// (node-llama-cpp batches the sequences' evaluations into one llama_decode), same GGUF, same threads, one run.
//
//   node --import tsx benchmarks/crosscheck/llama-cpp/batch-bench.ts [--model PATH] [--threads 2]
//        [--concurrency 1,4,16,32] [--prompt-tokens 32] [--decode-tokens 32] [--out benchmarks/out/batch-bench.json]
//
// Each sequence is a different slice of one text (--prompt-tokens long), prefilled first (not timed); then every
// sequence decodes --decode-tokens greedy tokens, all at once. tok/s = sequences × decode tokens / wall time.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

import { getLlama, LlamaLogLevel, type Token } from 'node-llama-cpp';

import { describeMachine } from '../../lib/machine.js';
import { measured, waitQuiet } from '../../lib/quiet.js';
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
    concurrency: { type: 'string', default: '1,4,16,32' },
    'prompt-tokens': { type: 'string', default: '32' },
    'decode-tokens': { type: 'string', default: '32' },
    'max-wait-s': { type: 'string', default: '300' },
    out: { type: 'string', default: join(repoRoot, 'benchmarks', 'out', 'batch-bench.json') },
  },
});
const modelPath = args.model!;
const threads = Number(args.threads);
const levels = args.concurrency!.split(',').map(Number);
const promptTokens = Number(args['prompt-tokens']);
const decodeTokens = Number(args['decode-tokens']);
const maxN = Math.max(...levels);

const TEXT =
  'The history of computing is a story of abstraction layered upon abstraction. Early machines were programmed by ' +
  'rewiring panels and flipping switches; later, stored programs let the same hardware run different tasks. ' +
  'Assembly languages gave names to instructions, compilers translated high-level languages into machine code, ' +
  'and operating systems shared one machine among many users. Networks connected machines into systems larger than ' +
  'any single computer, and the web made those systems reachable from every desk and pocket.';
const tokenizer = Tokenizer.fromGguf(await readGgufMetadata(modelPath));
let text = tokenizer.encode(TEXT, { addBos: false });
while (text.length < promptTokens + maxN) text = text.concat(text);
/** Sequence i's prompt: the text from token i, so that no two sequences are alike. */
const promptOf = (i: number): number[] => text.slice(i, i + promptTokens);

const tokensPerBlock = 32;
const blocksPerSeq = Math.ceil((promptTokens + decodeTokens + 1) / tokensPerBlock);
const engine = new ReferenceEngine({
  modelPath,
  pool: new Uint8Array(maxN * blocksPerSeq * ReferenceEngine.blockBytes(modelPath, { tokensPerBlock })),
  tokensPerBlock,
  threads,
});

async function runOurs(n: number): Promise<number[][]> {
  const seqs = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const blocks = engine.allocateBlocks(blocksPerSeq);
      return { blocks, logits: await engine.prefill(promptOf(i), blocks, 0) };
    }),
  );
  try {
    const { result } = await timed(() =>
      Promise.all(
        seqs.map(async (s) => {
          const out: number[] = [];
          let logits = s.logits;
          for (let k = 0; k < decodeTokens; k++) {
            const t = argmax(logits);
            out.push(t);
            logits = await engine.decode(t, s.blocks, promptTokens + k);
          }
          return out;
        }),
      ),
    );
    return result;
  } finally {
    for (const s of seqs) engine.freeBlocks(s.blocks);
  }
}

const nlcVersion = (JSON.parse(readFileSync(join(here, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')) as { version: string }).version;
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const lmodel = await llama.loadModel({ modelPath });
const greedy = { generateNext: { token: true, options: { temperature: 0 } } } as const;

async function runLlama(n: number): Promise<number[][]> {
  const perSeq = promptTokens + decodeTokens + 1;
  const ctx = await lmodel.createContext({ contextSize: n * perSeq, batchSize: Math.max(512, n), threads, sequences: n });
  try {
    const seqs = await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        const seq = ctx.getSequence();
        const p = promptOf(i);
        const input = p.map((t, j) => (j === p.length - 1 ? ([t as Token, greedy] as const) : (t as Token)));
        const out = await seq.controlledEvaluate(input as Parameters<typeof seq.controlledEvaluate>[0]);
        return { seq, next: out[p.length - 1]!.next.token! };
      }),
    );
    const { result } = await timed(() =>
      Promise.all(
        seqs.map(async (s) => {
          const out: number[] = [];
          let next = s.next;
          for (let k = 0; k < decodeTokens; k++) {
            out.push(next);
            const o = await s.seq.controlledEvaluate([[next, greedy]]);
            next = o[0]!.next.token!;
          }
          return out;
        }),
      ),
    );
    return result;
  } finally {
    await ctx.dispose();
  }
}

let lastDecodeMs = 0;
let lastForeign = 0;
async function timed<T>(fn: () => Promise<T>): Promise<{ result: T }> {
  const m = await measured(fn);
  lastDecodeMs = m.wallMs;
  lastForeign = m.foreignCores;
  return { result: m.result };
}

// Warm-up, then each level for both engines, alternately.
await runOurs(1);
await runLlama(1);
const idle = await waitQuiet(Number(args['max-wait-s']));
const rows: { n: number; ours: number; llama: number; ratio: number; foreign: [number, number] }[] = [];
for (const n of levels) {
  await runOurs(n);
  const ours = (n * decodeTokens * 1000) / lastDecodeMs;
  const oursForeign = lastForeign;
  await runLlama(n);
  const theirs = (n * decodeTokens * 1000) / lastDecodeMs;
  rows.push({ n, ours, llama: theirs, ratio: ours / theirs, foreign: [oursForeign, lastForeign] });
}

const machine = describeMachine();
const base = rows.find((r) => r.n === 1)?.ours;
console.log(`machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`);
console.log(`model: ${modelPath}; node-llama-cpp ${nlcVersion} (llama.cpp ${llama.llamaCppRelease.release}); threads ${threads}`);
console.log(`each sequence: prompt ${promptTokens} tokens (prefilled, not timed), then ${decodeTokens} greedy decode steps, all sequences at once\n`);
console.log('| sequences | kvfabric decode tok/s | llama.cpp decode tok/s | ratio | kvfabric vs its own at 1 |');
console.log('|---|---|---|---|---|');
for (const r of rows) {
  const own = base ? (r.ours / base).toFixed(2) + '×' : '';
  console.log(`| ${r.n} | ${r.ours.toFixed(1)} | ${r.llama.toFixed(1)} | ${r.ratio.toFixed(3)} | ${own} |`);
}
console.log(`\nother processes' CPU (cores) before: ${idle.toFixed(2)}; during runs (ours, llama.cpp): ${rows.map((r) => `[${r.foreign.map((x) => x.toFixed(2)).join(', ')}]`).join(' ')}`);
mkdirSync(dirname(args.out!), { recursive: true });
writeFileSync(
  args.out!,
  JSON.stringify({ date: new Date().toISOString(), machine, model: modelPath, nodeLlamaCpp: nlcVersion, threads, promptTokens, decodeTokens, rows }, null, 2),
);
console.log(`→ ${args.out}`);
await engine.close();
await lmodel.dispose();
