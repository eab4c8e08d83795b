// The kv router's choice and conditional disaggregation over workers that are real gRPC servers speaking the
// Worker service (Health and KvEvents), each announcing what its prefix cache holds: the worker holding the
// prompt's prefix wins until the load it carries outweighs what it saves, and a decode worker that holds all but a
// few prompt tokens (or saturated prefill workers) makes the request prefill there.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { blockHashes, prefixSalt } from '../src/kv/prefix-cache.js';
import { localPrefillReason, type FlowContext } from '../src/serve/flow.js';
import { Router, type WorkerEntry } from '../src/serve/router.js';
import { bindServer, WorkerService, type KvEvent, type WorkerStatus } from '../src/serve/rpc.js';
import { AUTH, quietLog, waitFor } from './helpers/serve.js';

const TPB = 4;
const SALT = prefixSalt(
  { name: 'm', layers: 1, embedding: 8, heads: 1, vocab: 10 },
  { numLayers: 1, kvHeads: 1, headDim: 8, tokensPerBlock: TPB, dtype: 'f16' },
);
const PROMPT = Array.from({ length: 26 }, (_, i) => i + 1);

/** A worker of `role` whose prefix cache holds `hashes`. */
async function announcing(role: string, hashes: string[]): Promise<{ server: grpc.Server; address: string }> {
  const server = new grpc.Server();
  server.addService(WorkerService, {
    Health: (_call: unknown, cb: grpc.sendUnaryData<Partial<WorkerStatus>>) => cb(null, { workerId: `${role}-${hashes.length}`, role, totalBlocks: 64 }),
    KvEvents: (call: grpc.ServerWritableStream<unknown, KvEvent>) => {
      call.write({ snapshot: true, stored: hashes, evicted: [], salt: SALT, tokensPerBlock: TPB });
    },
  });
  return { server, address: await bindServer(server, '127.0.0.1:0', AUTH) };
}

describe('the kv router', () => {
  const servers: grpc.Server[] = [];
  let router: Router;
  let holder: WorkerEntry;
  let other: WorkerEntry;
  let prefill: WorkerEntry;
  const ctx = (o: Partial<FlowContext>): FlowContext => ({
    router,
    mode: 'pull',
    prefillTimeoutMs: 1000,
    leaseMs: 1000,
    maxMigrations: 0,
    log: quietLog,
    ...o,
  });

  before(async () => {
    const a = await announcing('decode', blockHashes(SALT, PROMPT, TPB).slice(0, 5));
    const b = await announcing('decode', []);
    const p = await announcing('prefill', []);
    servers.push(a.server, b.server, p.server);
    router = new Router({ healthIntervalMs: 100, keepaliveMs: 10_000, auth: AUTH, log: quietLog, policy: 'kv', weights: { overlapWeight: 1, loadWeight: 1 } });
    for (const [address, role] of [
      [a.address, 'decode'],
      [b.address, 'decode'],
      [p.address, 'prefill'],
    ] as const)
      router.upsert(address, role, 'static');
    await waitFor(() => router.workers().every((w) => w.healthy) && router.index!.size(a.address) === 5, 'workers healthy and indexed');
    holder = router.workers().find((w) => w.address === a.address)!;
    other = router.workers().find((w) => w.address === b.address)!;
    prefill = router.workers().find((w) => w.address === p.address)!;
  });
  after(() => {
    router.close();
    for (const s of servers) s.forceShutdown();
  });

  test('the worker holding the prefix wins until its load outweighs what it saves', () => {
    const cached = router.choose('decode', { prompt: PROMPT });
    assert.equal(cached.entry, holder);
    assert.equal(cached.overlap, 5);
    assert.equal(cached.kind, 'cache');
    // 7 prompt blocks: the holder lacks 2, the other 7. Blocks in flight on the holder make up the difference.
    holder.activeBlocks = 6;
    assert.equal(router.choose('decode', { prompt: PROMPT }).entry, other);
    assert.equal(router.choose('decode', { prompt: PROMPT }).kind, 'load');
    holder.activeBlocks = 5;
    const tied = new Set([router.choose('decode', { prompt: PROMPT }).entry, router.choose('decode', { prompt: PROMPT }).entry]);
    assert.equal(tied.size, 2, 'equal cost: round-robin');
    holder.activeBlocks = 0;
  });

  test('conditional disaggregation: a few tokens left on the decode worker, or every prefill worker saturated', () => {
    const choice = router.choose('decode', { prompt: PROMPT });
    // 26 tokens, 20 cached: 6 to compute.
    assert.match(
      localPrefillReason(ctx({ localPrefillTokens: 6 }), PROMPT, choice),
      /^cached prefix: the decode worker holds 20 of 26 prompt tokens; 6 to compute/,
    );
    assert.equal(localPrefillReason(ctx({ localPrefillTokens: 5 }), PROMPT, choice), '');
    assert.equal(localPrefillReason(ctx({ localPrefillTokens: 0 }), PROMPT, choice), '', '0: never');
    const none = router.choose('decode', { prompt: PROMPT.map((t) => t + 100) });
    assert.equal(localPrefillReason(ctx({ localPrefillTokens: 64 }), PROMPT, none), '', 'nothing cached: the prefill worker computes it');
    prefill.active = 3;
    assert.match(localPrefillReason(ctx({ prefillSaturation: 3 }), PROMPT, none), /^prefill saturated/);
    assert.equal(localPrefillReason(ctx({ prefillSaturation: 4 }), PROMPT, none), '');
    prefill.active = 0;
    // A short prompt: its length, less what the decode worker holds, against --short-prompt-tokens.
    assert.match(localPrefillReason(ctx({ shortPromptTokens: 26 }), PROMPT, none), /^short prompt: 26 tokens to compute \(at most 26\)/);
    assert.equal(localPrefillReason(ctx({ shortPromptTokens: 25 }), PROMPT, none), '');
    assert.match(localPrefillReason(ctx({ shortPromptTokens: 6 }), PROMPT, choice), /^short prompt: 6 tokens to compute/);
    assert.equal(localPrefillReason(ctx({ shortPromptTokens: 0 }), PROMPT, none), '', '0: never');
  });
});
