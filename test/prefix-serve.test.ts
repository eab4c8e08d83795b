// The prefix cache and the kv router end to end: real worker processes with the cache on, the real tiny model,
// frontends in this process. A conversation's later turns must give the output of a run without any cache
// (disaggregated, aggregated, and prefilled on the decode worker by the router's choice), move only the blocks
// the decode worker lacks, and show the reuse on each side in the report. The router's index follows the
// workers' KV events, is rebuilt by a restarted frontend, and loses a dead worker's entries.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { ReferenceEngine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { kvBytesFor } from '../src/kv/plan.js';
import type { KvLayout } from '../src/kv/layout.js';
import type { KvProof } from '../src/serve/flow.js';
import type { Frontend } from '../src/serve/frontend/frontend.js';
import { health, SMOLLM2, SMOLLM2_SKIP, startFrontend, startStack, stop, tinyModel, waitFor, type Stack } from './helpers/serve.js';

const tiny = tinyModel();
const TPB = 16;
const ids = (n: number, seed: number): number[] => Array.from({ length: n }, (_, j) => 3 + ((j * 37 + seed * 101) % 290));

/** The reference: the engine in this process, no cache, no fabric. */
async function reference(prompt: number[], maxTokens: number, model = tiny): Promise<{ text: string; tokens: number[]; layout: KvLayout }> {
  const tokenizer = await Tokenizer.fromFile(model);
  const engine = new ReferenceEngine({
    modelPath: model,
    pool: new Uint8Array(64 * ReferenceEngine.blockBytes(model, { tokensPerBlock: TPB })),
    tokensPerBlock: TPB,
    threads: 1,
  });
  try {
    const g = await generate(engine, tokenizer, prompt, { maxTokens, temperature: 0 });
    return { text: g.text, tokens: g.tokens, layout: engine.layout };
  } finally {
    await engine.close();
  }
}

async function complete(url: string, name: string, prompt: number[], maxTokens: number): Promise<{ text: string; proof: KvProof }> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const res = await client.completions.create({ model: name, prompt, max_tokens: maxTokens, temperature: 0 });
  return { text: res.choices[0]!.text, proof: (res as unknown as { kvfabric: KvProof }).kvfabric };
}

describe('prefix cache and kv routing over tcp', () => {
  const model = tiny;
  let stack: Stack;
  const frontends: Frontend[] = [];
  const other = async (flags: Record<string, unknown>): Promise<Frontend> => {
    const f = await startFrontend(model, { prefill: [stack.prefill], decode: [stack.decode] }, flags);
    frontends.push(f);
    return f;
  };
  before(async () => {
    // Exact accounting first: the decode worker never prefills by the router's choice in this frontend.
    stack = await startStack(model, 'tcp', { localPrefillTokens: 0 }, { extra: ['--prefix-cache', 'on'] });
  });
  after(async () => {
    for (const f of frontends) await f.close();
    await stack.close();
  });

  const P1 = ids(40, 1);
  let P2: number[] = [];

  test('a second turn reuses the first: identical output, only the uncached blocks move, reuse reported on both sides', async () => {
    const ref1 = await reference(P1, 10);
    const t1 = await complete(stack.url, stack.modelName, P1, 10);
    assert.equal(t1.text, ref1.text);
    assert.equal(t1.proof.bytes, kvBytesFor(ref1.layout, P1.length));
    assert.equal(t1.proof.decode_reused_blocks, 0);
    assert.equal(t1.proof.prefill_reused_blocks, 0);
    assert.equal(ref1.tokens.length, 10, 'the tiny model runs to max_tokens here (the blocks below count on it)');

    // Turn 2: the history (prompt and reply) and a new message. The decode worker holds the prompt and the reply it
    // generated (positions 0..48 written: 3 full blocks), the prefill worker the prompt's 2 full blocks.
    P2 = [...P1, ...ref1.tokens, ...ids(12, 2)];
    const ref2 = await reference(P2, 10);
    const t2 = await complete(stack.url, stack.modelName, P2, 10);
    assert.equal(t2.text, ref2.text);
    assert.equal(t2.proof.mode, 'pull');
    assert.equal(t2.proof.decode_reused_blocks, 3);
    assert.equal(t2.proof.decode_reused_bytes, kvBytesFor(ref2.layout, 3 * TPB));
    assert.equal(t2.proof.bytes, kvBytesFor(ref2.layout, P2.length - 3 * TPB), 'only the part the decode worker lacks moved');
    assert.equal(t2.proof.prefill_reused_blocks, 2);
    assert.equal(t2.proof.prefill_reused_bytes, kvBytesFor(ref2.layout, 2 * TPB));
    assert.match(t2.proof.route.decode, /only healthy worker/);

    // The same prompt again: both sides hold its 3 reusable blocks.
    const t3 = await complete(stack.url, stack.modelName, P2, 10);
    assert.equal(t3.text, ref2.text);
    assert.equal(t3.proof.prefill_reused_blocks, 3);
    assert.equal(t3.proof.bytes, kvBytesFor(ref2.layout, P2.length - 3 * TPB));
    const s = await health(stack.decode.ready.address);
    assert.ok(s.cacheHits >= 6 && s.cachedBlocks >= 3);
  });

  test('aggregated: the decode worker prefills from the first uncached position, with identical output', async () => {
    const f = await other({ mode: 'aggregated' });
    const P3 = [...P2, ...ids(30, 3)];
    const ref = await reference(P3, 8);
    const res = await complete(f.url, stack.modelName, P3, 8);
    assert.equal(res.text, ref.text);
    assert.equal(res.proof.mode, 'aggregated');
    assert.equal(res.proof.bytes, 0);
    assert.ok(res.proof.decode_reused_blocks >= 3);
  });

  test('push mode: the prefill worker reuses its cache and writes only what the decode worker lacks', async () => {
    const f = await other({ mode: 'push', localPrefillTokens: 0 });
    const ref = await reference(P2, 10);
    const res = await complete(f.url, stack.modelName, P2, 10);
    assert.equal(res.text, ref.text);
    assert.equal(res.proof.mode, 'push');
    assert.equal(res.proof.op, 'WRITE');
    assert.equal(res.proof.prefill_reused_blocks, 3);
    // The reservation holds the decode worker's cached blocks ungranted; the WRITE covers the rest.
    assert.equal(res.proof.decode_reused_blocks, 3);
    assert.equal(res.proof.bytes, kvBytesFor(ref.layout, P2.length - 3 * TPB));
  });

  test('conditional disaggregation: a prompt the decode worker holds all but a few tokens of is prefilled there, and the report says why', async () => {
    const f = await other({ localPrefillTokens: 64 });
    await waitFor(() => (f.router.index?.size(stack.decode.ready.address) ?? 0) > 0, 'the index of the decode worker');
    const P4 = [...P2, ...ids(5, 4)];
    const ref = await reference(P4, 8);
    const res = await complete(f.url, stack.modelName, P4, 8);
    assert.equal(res.text, ref.text);
    assert.equal(res.proof.mode, 'local');
    assert.equal(res.proof.prefill_worker, null);
    assert.equal(res.proof.bytes, 0);
    assert.match(res.proof.fallback_reason ?? '', /^cached prefix: the decode worker holds 48 of 67 prompt tokens/);
    const metrics = await (await fetch(`${f.url}/metrics`)).text();
    assert.match(metrics, /kvfabric_local_prefills_total\{reason="cached-prefix"\} 1/);
    assert.match(metrics, /kvfabric_router_decisions_total\{role="decode",reason="only"\} 1/);
    const h = (await (await fetch(`${f.url}/health`)).json()) as { workers: { role: string; prefix_cache: { blocks: number; indexed_blocks: number } }[] };
    const decode = h.workers.find((w) => w.role === 'decode')!;
    assert.ok(decode.prefix_cache.blocks > 0);
  });

  test('eviction under pool pressure never takes a block in use: concurrent prompts larger than the pool all come out right', async () => {
    const prompts = Array.from({ length: 14 }, (_, i) => ids(120, 10 + i));
    const refs: Awaited<ReturnType<typeof reference>>[] = [];
    for (const p of prompts) refs.push(await reference(p, 6));
    const before = await health(stack.decode.ready.address);
    const results = await Promise.all(prompts.map((p) => complete(stack.url, stack.modelName, p, 6)));
    results.forEach((r, i) => assert.equal(r.text, refs[i]!.text, `prompt ${i}`));
    const after = await health(stack.decode.ready.address);
    assert.ok(after.cacheEvictions > before.cacheEvictions, 'the pool (64 blocks) cannot cache them all');
    // And the conversation still gives the right answer, from what is left of it in the caches.
    const ref2 = await reference(P2, 10);
    assert.equal((await complete(stack.url, stack.modelName, P2, 10)).text, ref2.text);
  });

  test("a restarted frontend rebuilds the index from the workers' snapshots; a dead worker's entries are dropped", async () => {
    const address = stack.decode.ready.address;
    const cached = (await health(address)).cachedBlocks;
    assert.ok(cached > 0);
    assert.equal(stack.frontend.router.index?.size(address), cached);
    const fresh = await other({});
    await waitFor(() => fresh.router.index?.size(address) === cached, 'the new frontend to index the decode worker');
    assert.equal(fresh.router.index?.size(stack.prefill.ready.address), (await health(stack.prefill.ready.address)).cachedBlocks);
    await stop(stack.decode);
    await waitFor(() => fresh.router.index?.size(address) === 0, "the dead worker's entries to go");
  });
});

describe('prefix cache with SmolLM2', { skip: SMOLLM2_SKIP }, () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack(SMOLLM2, 'tcp', { localPrefillTokens: 0 }, { extra: ['--prefix-cache', 'on'] });
  });
  after(() => stack?.close());

  test('a second turn gives the uncached output and moves only what the decode worker lacks', async () => {
    const P1 = ids(70, 5);
    const ref1 = await reference(P1, 12, SMOLLM2);
    assert.equal((await complete(stack.url, stack.modelName, P1, 12)).text, ref1.text);
    const P2 = [...P1, ...ref1.tokens, ...ids(20, 6)];
    const ref2 = await reference(P2, 12, SMOLLM2);
    const t2 = await complete(stack.url, stack.modelName, P2, 12);
    assert.equal(t2.text, ref2.text);
    assert.ok(t2.proof.decode_reused_blocks >= 4, JSON.stringify(t2.proof));
    assert.equal(t2.proof.prefill_reused_blocks, 4);
    assert.equal(t2.proof.bytes, kvBytesFor(ref2.layout, P2.length - t2.proof.decode_reused_blocks * TPB));
  });
});
