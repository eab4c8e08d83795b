// Continuous batching in the reference engine (issue 16): concurrent prefill/decode calls run as one native step,
// and a sequence's logits are bit-identical whether it ran alone or inside batches of others that join and leave
// at different steps, with chunked prefill on or off, at any thread count. Cancelling one sequence of a batch
// leaves the others untouched, and the pool returns to its free count. Tiny model always, SmolLM2 when fetched.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';

import { KvfError } from '../src/index.js';
import { ReferenceEngine, type ReferenceEngineOptions } from '../src/engine/engine.js';
import { argmax } from '../src/engine/sampling.js';
import { addon } from '../src/common/addon.js';
import { HAVE_SMOLLM2, SMOLLM2 } from './helpers/serve.js';

const dir = mkdtempSync(join(tmpdir(), 'kvf-batch-'));
const tiny = join(dir, 'tiny-llama.gguf');
before(() => execFileSync(process.execPath, ['scripts/make-tiny-model.mjs', tiny]));

type Limits = Pick<ReferenceEngineOptions, 'threads' | 'maxBatchSequences' | 'maxStepTokens'>;

function open(modelPath: string, blocks: number, tokensPerBlock: number, limits: Limits = {}): ReferenceEngine {
  const pool = new Uint8Array(blocks * ReferenceEngine.blockBytes(modelPath, { tokensPerBlock }));
  return new ReferenceEngine({ modelPath, pool, tokensPerBlock, ...limits });
}

const same = (x: Float32Array, y: Float32Array) => Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));

interface Run {
  tokens: number[];
  logits: Float32Array[];
}

/** Prefills `prompt`, then decodes greedily `gen` tokens; logits before each. `onToken` runs after each token. */
async function greedy(engine: ReferenceEngine, prompt: number[], gen: number, signal?: AbortSignal, onToken?: (n: number) => void): Promise<Run> {
  const blocks = engine.allocateBlocks(Math.ceil((prompt.length + gen) / engine.layout.tokensPerBlock));
  try {
    const run: Run = { tokens: [], logits: [] };
    let logits = await engine.prefill(prompt, blocks, 0, signal);
    for (let i = 0; i < gen; i++) {
      run.logits.push(logits);
      run.tokens.push(argmax(logits));
      onToken?.(i);
      if (i + 1 < gen) logits = await engine.decode(run.tokens[i]!, blocks, prompt.length + i, signal);
    }
    return run;
  } finally {
    engine.freeBlocks(blocks);
  }
}

function assertSame(got: Run, want: Run, what: string): void {
  assert.deepEqual(got.tokens, want.tokens, `${what}: tokens`);
  got.logits.forEach((l, i) => assert.ok(same(l, want.logits[i]!), `${what}: logits of token ${i} differ`));
}

/** Deterministic prompts of different lengths (1..40 tokens). */
function prompts(count: number, vocab: number): number[][] {
  return Array.from({ length: count }, (_, s) => Array.from({ length: 1 + ((s * 13) % 40) }, (_, i) => 1 + ((s * 131 + i * 37) % (vocab - 1))));
}

/**
 * Runs every prompt concurrently; sequence s joins once `s` tokens were generated in all (so they join at
 * different steps) and generates its own number of tokens (so they leave at different steps).
 */
async function concurrently(engine: ReferenceEngine, ps: number[][], gen: (s: number) => number): Promise<Run[]> {
  let produced = 0;
  const waiters: Array<{ at: number; go: () => void }> = [];
  const tick = () => {
    produced++;
    for (const w of waiters.filter((x) => x.at <= produced)) {
      waiters.splice(waiters.indexOf(w), 1);
      w.go();
    }
  };
  const joined = (s: number) => (s <= produced ? Promise.resolve() : new Promise<void>((go) => waiters.push({ at: s, go })));
  return Promise.all(ps.map(async (p, s) => (await joined(s), greedy(engine, p, gen(s), undefined, tick))));
}

async function checkBatching(modelPath: string, count: number, tpb: number, configs: Limits[], gen: (s: number) => number) {
  const alone = open(modelPath, 64 * count, tpb, { threads: 1 });
  const ps = prompts(count, alone.model.vocab);
  const want: Run[] = [];
  try {
    for (const p of ps) want.push(await greedy(alone, p, gen(want.length)));
  } finally {
    await alone.close();
  }
  for (const limits of configs) {
    const engine = open(modelPath, 64 * count, tpb, limits);
    try {
      const baseline = engine.freeBlockCount;
      const got = await concurrently(engine, ps, gen);
      got.forEach((r, s) => assertSame(r, want[s]!, `sequence ${s} with ${JSON.stringify(limits)}`));
      const { steps, sequences } = engine.stats;
      assert.ok(sequences > steps, `steps carried several sequences (${sequences} in ${steps} steps)`);
      assert.equal(engine.freeBlockCount, baseline);
    } finally {
      await engine.close();
    }
  }
}

test('tiny: 16 sequences joining and leaving at different steps give the logits each gives alone', async () => {
  await checkBatching(
    tiny,
    16,
    4,
    [
      { threads: 2 }, // everything fits one step: whole prompts beside decodes
      { threads: 1, maxBatchSequences: 5, maxStepTokens: 7 }, // chunked prefill, a full batch waits
      { threads: 3, maxBatchSequences: 16, maxStepTokens: 2 }, // prompts two tokens a step
    ],
    (s) => 3 + ((s * 5) % 9),
  );
});

test('SmolLM2: batched and chunked sequences give the logits each gives alone', { skip: !HAVE_SMOLLM2 && 'needs npm run fetch-model' }, async () => {
  await checkBatching(SMOLLM2, 4, 32, [{ threads: 2, maxStepTokens: 16 }], (s) => 3 + s);
});

test("cancelling one sequence of a batch leaves the others' logits untouched; the pool returns to its free count", async () => {
  const engine = open(tiny, 256, 4, { threads: 2, maxStepTokens: 6 });
  try {
    const baseline = engine.freeBlockCount;
    const ps = prompts(8, engine.model.vocab);
    const want: Run[] = [];
    for (const p of ps) want.push(await greedy(engine, p, 8));
    const gone = new AbortController();
    const runs = ps.map((p, s) =>
      greedy(engine, p, 8, s === 3 ? gone.signal : undefined, (i) => {
        if (s === 3 && i === 2) gone.abort();
      }),
    );
    // A prompt cancelled while its chunks are queued or running.
    const early = new AbortController();
    const long = assert.rejects(greedy(engine, prompts(40, engine.model.vocab)[39]!, 4, early.signal), (e: KvfError) => e.code === 'KVF_ERR_CANCELLED');
    setImmediate(() => early.abort());
    await assert.rejects(runs[3]!, (e: KvfError) => e.code === 'KVF_ERR_CANCELLED');
    await long;
    for (const s of [0, 1, 2, 4, 5, 6, 7]) assertSame(await runs[s]!, want[s]!, `sequence ${s}`);
    assert.equal(engine.freeBlockCount, baseline);
  } finally {
    await engine.close();
  }
});

test('Engine.step runs a batch of sequences together; the native step drops a cancelled or conflicting entry, not the others', async () => {
  const engine = open(tiny, 64, 4, { threads: 2 });
  const ps = prompts(3, engine.model.vocab).map((p) => [...p, 5, 6]);
  const tables = ps.map((p) => engine.allocateBlocks(Math.ceil(p.length / 4)));
  try {
    const alone: Float32Array[] = [];
    for (let s = 0; s < 3; s++) alone.push(await engine.prefill(ps[s]!, tables[s]!));
    const batch = await engine.step(ps.map((tokens, s) => ({ tokens, blocks: tables[s]!, startPos: 0 })));
    batch.forEach((l, s) => assert.ok(same(l, alone[s]!), `sequence ${s}`));
    await assert.rejects(
      engine.step([
        { tokens: ps[0]!, blocks: tables[0]!, startPos: 0 },
        { tokens: ps[1]!, blocks: tables[1]!, startPos: 0, signal: AbortSignal.abort() },
      ]),
      { code: 'KVF_ERR_CANCELLED' },
    );
  } finally {
    await engine.close();
  }

  // The native step itself: entry 1 cancelled, entry 2 writes a block entry 0 writes; entry 0 runs as alone.
  const blockBytes = ReferenceEngine.blockBytes(tiny, { tokensPerBlock: 4 });
  const native = new addon.NativeEngine(tiny, new Uint8Array(64 * blockBytes), { tokensPerBlock: 4, threads: 2 });
  try {
    const t0 = native.allocate(Math.ceil(ps[0]!.length / 4));
    const t1 = native.allocate(Math.ceil(ps[1]!.length / 4));
    const tokens = ps.map((p) => Int32Array.from(p));
    const alone = await native.forward(tokens[0]!, t0, 0);
    const out = await native.step([
      { tokens: tokens[0]!, table: t0, startPos: 0 },
      { tokens: tokens[1]!, table: t1, startPos: 0, cancel: Int32Array.of(1) },
      { tokens: tokens[0]!, table: t0, startPos: 0 },
      { tokens: tokens[0]!, table: t0, startPos: 0, logits: false },
    ]);
    assert.ok(out[0] instanceof Float32Array && same(out[0], alone));
    assert.equal((out[1] as { code?: string }).code, 'KVF_ERR_CANCELLED');
    assert.equal((out[2] as { code?: string }).code, 'KVF_ERR_INVALID_ARGUMENT');
    assert.match((out[2] as Error).message, /another sequence/);
    const quiet = await native.step([{ tokens: tokens[1]!, table: t1, startPos: 0, logits: false }]);
    assert.equal(quiet[0], null);
  } finally {
    native.close();
  }
});

test("the engine's step clock: decode-only steps counted apart from prefill steps, compute and hand-off both timed", async () => {
  const engine = open(tiny, 16, 16, { threads: 1 });
  try {
    const zero = engine.stats;
    assert.deepEqual([zero.stepSeconds, zero.handOffSeconds, zero.decodeSteps, zero.decodeStepSeconds], [0, 0, 0, 0]);
    await greedy(engine, [1, 2, 3, 4, 5], 9); // one prefill step, then 8 decode steps
    const s = engine.stats;
    assert.equal(s.steps, 9);
    assert.equal(s.decodeSteps, 8);
    assert.ok(s.decodeStepSeconds > 0, 'decode steps took time');
    assert.ok(s.stepSeconds > s.decodeStepSeconds, 'the prefill step is in the total, not in the decode steps');
    assert.ok(s.handOffSeconds > 0, 'handing a step to the thread and back takes time');
  } finally {
    await engine.close();
  }
});

test("a decode's next step starts as soon as the callers of the last one came back, before work they queued for later", async () => {
  const engine = open(tiny, 16, 16, { threads: 1 });
  try {
    const blocks = engine.allocateBlocks(2);
    await engine.prefill([1, 2, 3], blocks, 0);
    let pos = 3;
    for (let i = 0; i < 5; i++) {
      await engine.decode(4, blocks, pos++);
      // What the decode worker does with each token: its write waits for the end of this turn of the event loop,
      // and the step that carries the next token must already have started by then.
      const before = engine.stats.steps;
      const seen = new Promise<number>((resolve) => setImmediate(() => resolve(engine.stats.steps)));
      const next = engine.decode(4, blocks, pos);
      assert.equal(await seen, before + 1, `step ${i}: the next step started before the queued write ran`);
      await next;
      pos++;
    }
  } finally {
    await engine.close();
  }
});
