// Replicas standing in for each other, with real processes: a decode worker killed with -9 in the middle of a
// stream hands the request to the other decode worker, which rebuilds the K/V of the prompt and of the tokens
// the client already has and continues; the client's stream goes on without an error and, decoding greedily,
// its text equals an undisturbed run's. A prefill worker that fails is replaced by another replica before the
// decode worker falls back to prefilling locally.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';

import OpenAI from 'openai';

import type { KvProof } from '../src/serve/flow.js';
import type { Frontend } from '../src/serve/frontend/frontend.js';
import { SLOW_MODEL_SHAPE, SLOW_MODEL_SKIP, health, poolAtBaseline, startFrontend, startWorker, stop, tinyModel, type Proc } from './helpers/serve.js';

const PROMPT = 'the quick brown fox jumps over the lazy dog near the old stone bridge';

interface Chunk {
  choices: { text: string; finish_reason: string | null }[];
  kvfabric?: KvProof;
}

interface Cluster {
  prefill: Proc[];
  decode: Proc[];
  frontend: Frontend;
  client: OpenAI;
  modelName: string;
}

async function startCluster(model: string, prefills: number, decodes: number, frontendFlags: Record<string, unknown> = {}): Promise<Cluster> {
  const extra = ['--blocks', '160'];
  const [prefill, decode] = await Promise.all([
    Promise.all(Array.from({ length: prefills }, (_, i) => startWorker('prefill', { model, provider: 'tcp', id: `prefill-${i}`, extra }))),
    Promise.all(Array.from({ length: decodes }, (_, i) => startWorker('decode', { model, provider: 'tcp', id: `decode-${i}`, extra }))),
  ]);
  const frontend = await startFrontend(model, { prefill, decode }, frontendFlags);
  const client = new OpenAI({ baseURL: `${frontend.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  return {
    prefill,
    decode,
    frontend,
    client,
    modelName: model
      .split('/')
      .pop()!
      .replace(/\.gguf$/, ''),
  };
}

/** Streams a completion (greedy unless `sampling` says otherwise); `onChunk` sees the number of chunks so far. Returns the text and the last chunk's proof. */
async function streamText(
  c: Cluster,
  maxTokens: number,
  onChunk: (n: number) => void | Promise<void> = () => {},
  sampling: { temperature: number; seed?: number } = { temperature: 0 },
): Promise<{ text: string; proof: KvProof; finish: string | null }> {
  const stream = await c.client.completions.create({ model: c.modelName, prompt: PROMPT, max_tokens: maxTokens, stream: true, ...sampling });
  let text = '';
  let proof: KvProof | undefined;
  let finish: string | null = null;
  let n = 0;
  for await (const chunk of stream as AsyncIterable<Chunk>) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    proof = chunk.kvfabric ?? proof;
    await onChunk(++n);
  }
  return { text, proof: proof!, finish };
}

describe('failover', { skip: SLOW_MODEL_SKIP }, () => {
  let cluster: Cluster | undefined;
  afterEach(async () => {
    await cluster?.frontend.close();
    await Promise.all([...(cluster?.prefill ?? []), ...(cluster?.decode ?? [])].map(stop));
    cluster = undefined;
  });

  test('kill -9 of the decode worker mid-stream: the other one continues, the client sees the undisturbed text', async () => {
    cluster = await startCluster(tinyModel(SLOW_MODEL_SHAPE), 1, 2);
    const c = cluster;
    const undisturbed = await streamText(c, 1500);
    assert.equal(undisturbed.proof.migrations.length, 0);
    assert.ok(undisturbed.text.length > 1000, 'a long generation, to interrupt');

    let victim: Proc | undefined;
    const disturbed = await streamText(c, 1500, async (n) => {
      if (n !== 40 || victim) return;
      // The decode worker that holds the stream is the one with a call in flight.
      const busy = await Promise.all(c.decode.map(async (p) => ((await health(p.ready.address)).inflight > 0 ? p : undefined)));
      victim = busy.find((p) => p !== undefined);
      assert.ok(victim, 'one decode worker is streaming');
      victim.child.kill('SIGKILL');
    });
    assert.ok(victim);
    assert.equal(disturbed.text, undisturbed.text);
    assert.equal(disturbed.finish, undisturbed.finish);
    const [moved] = disturbed.proof.migrations;
    assert.equal(disturbed.proof.migrations.length, 1);
    assert.equal(moved!.from, victim.ready.workerId);
    assert.ok(moved!.after_tokens >= 39, `moved after ${moved!.after_tokens} tokens`);
    assert.notEqual(disturbed.proof.decode_worker, victim.ready.workerId);
    // The prompt's K/V had reached the first decode worker over the fabric; the proof keeps that transfer.
    assert.equal(disturbed.proof.mode, 'pull');
    assert.equal(disturbed.proof.op, 'READ');
    const survivor = c.decode.find((p) => p !== victim)!;
    await poolAtBaseline(survivor.ready.address);
    await poolAtBaseline(c.prefill[0]!.ready.address);
  });

  test('a decode worker that freezes mid-stream misses its keepalive pings; the other one continues a seeded sampled stream identically', async () => {
    cluster = await startCluster(tinyModel(SLOW_MODEL_SHAPE), 1, 2, { keepaliveMs: 1000 });
    const c = cluster;
    // Sampled, not greedy: the sampler's state travels with the request, so the seeded sequence goes on unchanged.
    const sampling = { temperature: 0.9, seed: 42 };
    const undisturbed = await streamText(c, 1500, undefined, sampling);
    let victim: Proc | undefined;
    const disturbed = await streamText(
      c,
      1500,
      async (n) => {
        if (n !== 40 || victim) return;
        const busy = await Promise.all(c.decode.map(async (p) => ((await health(p.ready.address)).inflight > 0 ? p : undefined)));
        victim = busy.find((p) => p !== undefined)!;
        victim.child.kill('SIGSTOP');
      },
      sampling,
    );
    assert.equal(disturbed.text, undisturbed.text);
    assert.equal(disturbed.proof.migrations[0]?.from, victim!.ready.workerId);
    victim!.child.kill('SIGCONT');
    // Woken, it finds its stream gone and frees what the request held.
    await poolAtBaseline(victim!.ready.address);
  });

  test('with no decode worker left to move to, the client gets a coded error instead', async () => {
    cluster = await startCluster(tinyModel(SLOW_MODEL_SHAPE), 1, 2, { maxMigrations: 0 });
    const c = cluster;
    await assert.rejects(
      streamText(c, 1500, async (n) => {
        if (n !== 40) return;
        for (const p of c.decode) if ((await health(p.ready.address)).inflight > 0) p.child.kill('SIGKILL');
      }),
      (err: InstanceType<typeof OpenAI.APIError>) => err.code === 'KVF_ERR_WORKER_FAILED' && /decode worker/.test(err.message),
    );
  });

  test('a dead prefill worker is replaced by another replica, not by local prefill', async () => {
    // A long health interval keeps the dead worker in the frontend's rotation: requests find out by calling it.
    cluster = await startCluster(tinyModel(), 2, 1, { healthIntervalMs: 60_000 });
    const c = cluster;
    const expected = await streamText(c, 12);
    const [dead, alive] = c.prefill as [Proc, Proc];
    dead.child.kill('SIGKILL');
    await dead.exited;
    // Round-robin sends one of these two to the dead worker first.
    for (let i = 0; i < 2; i++) {
      const r = await streamText(c, 12);
      assert.equal(r.text, expected.text);
      assert.equal(r.proof.mode, 'pull');
      assert.equal(r.proof.prefill_worker, alive.ready.workerId);
      assert.equal(r.proof.fallback_reason, null);
    }
    assert.equal(c.frontend.router.workers().find((w) => w.address === dead.ready.address)?.healthy, false);
    await poolAtBaseline(alive.ready.address);
    await poolAtBaseline(c.decode[0]!.ready.address);
  });

  test('push mode with no prefill worker left: the decode worker prefills into the blocks it reserved, and nothing stays held', async () => {
    cluster = await startCluster(tinyModel(), 1, 1, { healthIntervalMs: 60_000, mode: 'push' });
    const c = cluster;
    const expected = await streamText(c, 12);
    assert.equal(expected.proof.mode, 'push');
    const [dead] = c.prefill as [Proc];
    dead.child.kill('SIGKILL');
    await dead.exited;
    const r = await streamText(c, 12);
    assert.equal(r.text, expected.text);
    assert.ok(r.proof.fallback_reason, 'local prefill says why');
    // The reservation went to the Decode that prefilled locally: nothing waits for its lease (30 s) to expire.
    await poolAtBaseline(c.decode[0]!.ready.address, 2000);
  });
});
