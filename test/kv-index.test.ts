// The frontend's KV index takes KV events from the network: a worker that sends malformed ones (hashes that are
// not 32 hex digits, more entries than its pool has blocks) is dropped from the index until it reconnects with a
// good snapshot. The "worker" here is a real gRPC server speaking the Worker service, scripted per connection.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { blockHashes, prefixSalt } from '../src/kv/prefix-cache.js';
import { Router } from '../src/serve/router.js';
import { bindServer, WorkerService, type KvEvent, type WorkerStatus } from '../src/serve/rpc.js';
import { AUTH, quietLog, waitFor } from './helpers/serve.js';

const TPB = 4;
const SALT = prefixSalt(
  { name: 'm', layers: 1, embedding: 8, heads: 1, vocab: 10 },
  { numLayers: 1, kvHeads: 1, headDim: 8, tokensPerBlock: TPB, dtype: 'f16' },
);
const PROMPT = Array.from({ length: 25 }, (_, i) => i + 1);
const HASHES = blockHashes(SALT, PROMPT, TPB);
const fake = (n: number, from: number): string[] => Array.from({ length: n }, (_, i) => (from + i).toString(16).padStart(32, '0'));
const event = (e: Partial<KvEvent>): KvEvent => ({ snapshot: false, stored: [], evicted: [], salt: SALT, tokensPerBlock: TPB, ...e });

describe('the KV index', () => {
  let server: grpc.Server;
  let address: string;
  let router: Router;
  // What each connection of the KV event stream sends, in order; the stream then stays open.
  const script: KvEvent[][] = [];
  let connections = 0;

  before(async () => {
    server = new grpc.Server();
    const status: Partial<WorkerStatus> = { workerId: 'scripted', role: 'decode', totalBlocks: 8 };
    server.addService(WorkerService, {
      Health: (_call: unknown, cb: grpc.sendUnaryData<Partial<WorkerStatus>>) => cb(null, status),
      KvEvents: (call: grpc.ServerWritableStream<unknown, KvEvent>) => {
        for (const ev of script[connections++] ?? []) call.write(ev);
      },
    });
    address = await bindServer(server, '127.0.0.1:0', AUTH);
  });
  after(() => {
    router?.close();
    server.forceShutdown();
  });

  test('follows snapshots and events, and drops a worker whose events are malformed until a good snapshot', async () => {
    script.push(
      [event({ snapshot: true, stored: HASHES.slice(0, 3) }), event({ stored: [HASHES[3]!] }), event({ evicted: [HASHES[2]!] })],
      [event({ snapshot: true, stored: HASHES.slice(0, 2) }), event({ stored: ['not-a-hash'] })],
      // More hashes in one event than the worker's pool (8 blocks) has blocks, then more entries in all.
      [event({ snapshot: true, stored: fake(9, 0) })],
      [event({ snapshot: true, stored: fake(5, 0) }), event({ stored: fake(4, 5) })],
      [event({ snapshot: true, stored: HASHES.slice(0, 5) })],
    );
    router = new Router({ healthIntervalMs: 100, keepaliveMs: 10_000, auth: AUTH, log: quietLog, policy: 'kv' });
    router.upsert(address, 'decode', 'static');
    const index = router.index!;
    await waitFor(() => index.size(address) === 3 && connections === 1, 'the first snapshot and events');
    // Evicted block 2 ends the leading run: only 2 blocks of the prompt count.
    assert.equal(index.overlap(address, PROMPT), 2);
    // The first stream stays open; a restart of the frontend side (unwatch, watch) reconnects.
    router.remove(address, 'test');
    assert.equal(index.size(address), 0);
    router.upsert(address, 'decode', 'static');
    await waitFor(() => connections >= 5 && index.size(address) === 5, 'the malformed streams dropped, the good snapshot taken');
    // Only blocks before the last prompt token's block count: 25 tokens, blocks of 4 → 6 reusable, 5 cached.
    assert.equal(index.overlap(address, PROMPT), 5);
    assert.equal(index.overlap(address, PROMPT.slice(0, 20)), 4);
    // Another salt (another model or layout) never matches.
    const other = prefixSalt(
      { name: 'other', layers: 1, embedding: 8, heads: 1, vocab: 10 },
      { numLayers: 1, kvHeads: 1, headDim: 8, tokensPerBlock: TPB, dtype: 'f16' },
    );
    assert.ok(!blockHashes(other, PROMPT, TPB).some((h) => HASHES.includes(h)));
  });
});
