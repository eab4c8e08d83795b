// etcd discovery against a real etcd server that this file starts (temp data dir, free ports on 127.0.0.1),
// with real worker processes (tiny model, provider tcp) publishing themselves under a lease and a frontend
// in this process watching the prefix, no static addresses anywhere:
//   - workers join, and a completion goes through them with the KV pulled by READ;
//   - kill -9 of one decode worker of two: its lease expires, etcd deletes the key, the router drops it,
//     and every later request goes to the other one;
//   - SIGTERM: the worker revokes its lease before it exits 0 (TTL 30 s, so only the revocation can have
//     removed the key), and the router drops it;
//   - a decode worker started later joins and gets requests;
//   - malformed entries under the prefix are ignored, in the first listing and in the watch, and a key that
//     turns malformed stops announcing its worker;
//   - a frontend whose etcd is unreachable fails to start (it used to wait forever for its watch);
//   - a worker whose lease is revoked behind its back registers again;
//   - a watch that etcd cancels (its revision compacted while the frontend was cut off from etcd, through a
//     TCP proxy here) gives way to a fresh listing and watch, so changes made meanwhile are not lost.
// Each test has its own key prefix. The suite is skipped when no etcd binary is installed.
import assert from 'node:assert/strict';
import { connect, createServer, type Socket } from 'node:net';
import { after, before, describe, test, type TestContext } from 'node:test';

import { Etcd3 } from 'etcd3';

import { frontendConfig } from '../src/serve/config.js';
import type { KvProof } from '../src/serve/flow.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { findEtcd, freePort, startEtcd, stopEtcd, type EtcdServer } from './helpers/etcd.js';
import { CLUSTER, quietLog, startWorker, stop, tinyModel, waitFor, type Proc } from './helpers/serve.js';

const TEST_TIMEOUT = 60_000;
/** Lease TTL of the workers, seconds: short, so a killed worker's entry goes quickly. */
const TTL = 2;
/** Waits are generous: they bound a hang, they do not measure anything. */
const WAIT = 20_000;

const ETCD = findEtcd();

/** A TCP proxy to 127.0.0.1:port that can cut every connection and refuse new ones, then let them in again. */
async function tcpProxy(port: number) {
  const sockets = new Set<Socket>();
  let open = true;
  const server = createServer((downstream) => {
    if (!open) return void downstream.destroy();
    const upstream = connect(port, '127.0.0.1');
    const end = (): void => {
      for (const s of [downstream, upstream]) {
        s.destroy();
        sockets.delete(s);
      }
    };
    for (const s of [downstream, upstream]) {
      sockets.add(s);
      s.on('error', end).on('close', end);
    }
    downstream.pipe(upstream).pipe(downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`,
    cut(): void {
      open = false;
      for (const s of sockets) s.destroy();
    },
    restore(): void {
      open = true;
    },
    close(): Promise<void> {
      this.cut();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

describe('serving: etcd discovery', { skip: ETCD ? false : 'no etcd binary (/usr/bin/etcd or etcd on PATH); install etcd-server to run these tests' }, () => {
  let etcd: EtcdServer;
  let kv: Etcd3;
  let model: string;
  let modelName: string;
  let prefixes = 0;

  before(async () => {
    etcd = await startEtcd(ETCD!, WAIT);
    kv = new Etcd3({ hosts: etcd.url });
    model = tinyModel();
    modelName = model
      .split('/')
      .pop()!
      .replace(/\.gguf$/, '');
  });

  after(async () => {
    kv?.close();
    if (etcd) await stopEtcd(etcd);
  });

  /** A key prefix of this test only, and cleanup of what the test starts (frontend first, then workers). */
  function scope(t: TestContext) {
    const prefix = `/kvf-test/${process.pid}/${++prefixes}/`;
    const workers: Proc[] = [];
    const frontends: Frontend[] = [];
    t.after(async () => {
      for (const f of frontends) await f.close();
      await Promise.all(workers.map((w) => stop(w)));
    });
    return {
      prefix,
      async worker(role: 'prefill' | 'decode', id: string, ttl = TTL): Promise<Proc> {
        const p = await startWorker(role, { model, provider: 'tcp', id, extra: ['--etcd', etcd.url, '--etcd-ttl', String(ttl), '--etcd-prefix', prefix] });
        workers.push(p);
        return p;
      },
      async frontend(etcdUrl = etcd.url): Promise<Frontend> {
        const f = await Frontend.start(
          frontendConfig({ flags: { ...CLUSTER, model, listen: '127.0.0.1:0', etcd: [etcdUrl], etcdPrefix: prefix, healthIntervalMs: 200 }, env: {} }),
          quietLog,
        );
        frontends.push(f);
        return f;
      },
    };
  }

  function listed(frontend: Frontend, address: string): boolean {
    return frontend.router.workers().some((w) => w.address === address);
  }

  /** Waits until each worker is in the router as an etcd entry, healthy, under its own id. */
  function joined(frontend: Frontend, ...procs: Proc[]): Promise<void> {
    return waitFor(
      () =>
        procs.every((p) =>
          frontend.router
            .workers()
            .some(
              (w) => w.address === p.ready.address && w.source === 'etcd' && w.role === p.ready.role && w.healthy && w.status?.workerId === p.ready.workerId,
            ),
        ),
      `${procs.map((p) => p.ready.workerId).join(', ')} listed through etcd and healthy`,
      WAIT,
    );
  }

  async function complete(frontend: Frontend, prompt = 'The quick brown fox'): Promise<KvProof> {
    const res = await fetch(`${frontend.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: modelName, prompt, temperature: 0, max_tokens: 8 }),
    });
    const body = (await res.json()) as { choices?: { text: string }[]; kvfabric?: KvProof };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.ok(body.kvfabric, 'the response carries the kvfabric proof');
    return body.kvfabric;
  }

  async function keys(prefix: string): Promise<string[]> {
    return (await kv.getAll().prefix(prefix).keys()).map((k) => k.slice(prefix.length)).sort();
  }

  test('workers publish themselves and a completion goes through them', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    const [prefill, decode] = await Promise.all([s.worker('prefill', 'p-join'), s.worker('decode', 'd-join')]);
    assert.deepEqual(await keys(s.prefix), ['d-join', 'p-join']);
    assert.deepEqual(JSON.parse((await kv.get(s.prefix + 'd-join').string())!), { workerId: 'd-join', role: 'decode', address: decode.ready.address });

    const frontend = await s.frontend();
    await joined(frontend, prefill, decode);
    assert.deepEqual(
      frontend.router
        .workers()
        .map((w) => `${w.role} ${w.address} ${w.source}`)
        .sort(),
      [`decode ${decode.ready.address} etcd`, `prefill ${prefill.ready.address} etcd`],
    );

    const proof = await complete(frontend);
    assert.equal(proof.mode, 'pull');
    assert.equal(proof.prefill_worker, 'p-join');
    assert.equal(proof.decode_worker, 'd-join');
    assert.equal(proof.op, 'READ');
    assert.match(proof.provider, /^tcp/);
    assert.ok(proof.bytes > 0, `bytes ${proof.bytes}`);
  });

  test('kill -9: the lease expires, the worker is dropped, requests go to the other decode worker', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    const [prefill, a, b] = await Promise.all([s.worker('prefill', 'p-kill'), s.worker('decode', 'd-kill-a'), s.worker('decode', 'd-kill-b')]);
    const frontend = await s.frontend();
    await joined(frontend, prefill, a, b);

    a.child.kill('SIGKILL');
    assert.equal((await a.exited).signal, 'SIGKILL');
    // Nobody revoked the lease: etcd deletes the key when it expires, and the watch drops the worker.
    await waitFor(async () => !(await keys(s.prefix)).includes('d-kill-a'), 'etcd to delete the key of the killed worker', WAIT);
    await waitFor(() => !listed(frontend, a.ready.address), 'the router to drop the killed worker', WAIT);
    assert.deepEqual(await keys(s.prefix), ['d-kill-b', 'p-kill']);

    for (let i = 0; i < 4; i++) {
      const proof = await complete(frontend, `request ${i} after the kill`);
      assert.equal(proof.decode_worker, 'd-kill-b');
      assert.equal(proof.prefill_worker, 'p-kill');
      assert.equal(proof.op, 'READ');
    }
  });

  test('SIGTERM: the worker revokes its lease, exits 0, and is dropped', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    // A TTL far beyond the waits here: only the revocation can remove the key in time.
    const [prefill, decode] = await Promise.all([s.worker('prefill', 'p-term', 30), s.worker('decode', 'd-term', 30)]);
    const frontend = await s.frontend();
    await joined(frontend, prefill, decode);

    assert.deepEqual(await stop(decode), { code: 0, signal: null });
    // The worker leaves discovery before it exits, so the key is gone by now.
    assert.deepEqual(await keys(s.prefix), ['p-term']);
    await waitFor(() => !listed(frontend, decode.ready.address), 'the router to drop the stopped worker', WAIT);
    assert.ok(listed(frontend, prefill.ready.address), 'the prefill worker stays');
  });

  test('a decode worker started later joins and receives requests', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    const [prefill, first] = await Promise.all([s.worker('prefill', 'p-late'), s.worker('decode', 'd-first')]);
    const frontend = await s.frontend();
    await joined(frontend, prefill, first);
    assert.equal((await complete(frontend)).decode_worker, 'd-first');

    const late = await s.worker('decode', 'd-late');
    await joined(frontend, prefill, first, late);
    const served: string[] = [];
    for (let i = 0; i < 4; i++) {
      const proof = await complete(frontend, `request ${i} after the join`);
      assert.equal(proof.op, 'READ');
      served.push(proof.decode_worker);
    }
    assert.ok(served.includes('d-late'), `the new decode worker served none of ${served.join(', ')}`);
  });

  test('malformed entries under the prefix are ignored', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    // In place before the frontend starts: its first listing sees them.
    await kv.put(s.prefix + 'not-json').value('{"address":');
    await kv.put(s.prefix + 'null').value('null');
    await kv.put(s.prefix + 'no-role').value(JSON.stringify({ workerId: 'no-role', address: '127.0.0.1:1' }));
    await kv.put(s.prefix + 'bad-role').value(JSON.stringify({ workerId: 'bad-role', role: 'frontend', address: '127.0.0.1:1' }));
    await kv.put(s.prefix + 'no-address').value(JSON.stringify({ workerId: 'no-address', role: 'decode' }));
    const [prefill, decode] = await Promise.all([s.worker('prefill', 'p-junk'), s.worker('decode', 'd-junk')]);
    const frontend = await s.frontend();
    await joined(frontend, prefill, decode);
    assert.deepEqual(
      frontend.router
        .workers()
        .map((w) => w.address)
        .sort(),
      [decode.ready.address, prefill.ready.address].sort(),
    );

    // Through the watch: a malformed put, then a well-formed one after it (events arrive in order, so once
    // the second shows, the first has been handled) whose key then turns malformed and stops announcing.
    const fake = `127.0.0.1:${await freePort()}`;
    await kv.put(s.prefix + 'garbage').value('\u0000\u00ff not json');
    await kv.put(s.prefix + 'fake').value(JSON.stringify({ workerId: 'fake', role: 'decode', address: fake }));
    await waitFor(() => listed(frontend, fake), 'the well-formed entry put after the malformed one', WAIT);
    await kv.put(s.prefix + 'fake').value('[]');
    await waitFor(() => !listed(frontend, fake), 'the entry that turned malformed to be dropped', WAIT);

    assert.deepEqual(
      frontend.router
        .workers()
        .map((w) => w.address)
        .sort(),
      [decode.ready.address, prefill.ready.address].sort(),
    );
    const proof = await complete(frontend);
    assert.equal(proof.prefill_worker, 'p-junk');
    assert.equal(proof.decode_worker, 'd-junk');
    assert.equal(proof.op, 'READ');
  });

  test('a frontend whose etcd is unreachable fails to start instead of waiting', { timeout: TEST_TIMEOUT }, async () => {
    const nowhere = `http://127.0.0.1:${await freePort()}`;
    await assert.rejects(
      Frontend.start(frontendConfig({ flags: { ...CLUSTER, model, listen: '127.0.0.1:0', etcd: [nowhere], healthIntervalMs: 200 }, env: {} }), quietLog),
      /UNAVAILABLE|ECONNREFUSED/,
    );
  });

  test('a worker whose lease is revoked behind its back registers again', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    const decode = await s.worker('decode', 'd-revoked');
    const frontend = await s.frontend();
    await joined(frontend, decode);

    const [entry] = (await kv.get(s.prefix + 'd-revoked').exec()).kvs;
    assert.ok(entry, 'the worker has a key');
    await kv.leaseClient.leaseRevoke({ ID: entry.lease });
    await waitFor(() => !listed(frontend, decode.ready.address), 'the router to drop the worker whose lease was revoked', WAIT);
    // The worker's next keepalive finds the lease gone; it takes a new one and puts its key back.
    await waitFor(async () => (await kv.get(s.prefix + 'd-revoked').exec()).kvs[0]?.lease !== undefined, 'the key to come back', WAIT);
    assert.notEqual((await kv.get(s.prefix + 'd-revoked').exec()).kvs[0]!.lease, entry.lease);
    await joined(frontend, decode);
    assert.equal((await complete(frontend)).decode_worker, 'd-revoked');
  });

  test('a watch cancelled by compaction is replaced by a fresh listing and watch', { timeout: TEST_TIMEOUT }, async (t) => {
    const s = scope(t);
    const proxy = await tcpProxy(Number(new URL(etcd.url).port));
    t.after(() => proxy.close());
    // Entries of workers that do not exist: the router lists them (unhealthy), which is all this test reads.
    // Nobody listens on their ports, so freePort() may hand the same one out twice: each entry gets its own.
    const used = new Set<number>();
    const entry = async (name: string, role: 'prefill' | 'decode'): Promise<string> => {
      let port = await freePort();
      while (used.has(port)) port = await freePort();
      used.add(port);
      const address = `127.0.0.1:${port}`;
      await kv.put(s.prefix + name).value(JSON.stringify({ workerId: name, role, address }));
      return address;
    };
    const [gone, stays] = [await entry('gone', 'decode'), await entry('stays', 'prefill')];
    const frontend = await s.frontend(proxy.url);
    await waitFor(() => listed(frontend, gone) && listed(frontend, stays), 'the first listing', WAIT);

    // Cut off, the frontend misses a delete and a put, and compaction removes the history its watch needs.
    proxy.cut();
    await kv.delete().key(s.prefix + 'gone');
    const added = await entry('added', 'decode');
    const { header } = await kv.get(s.prefix + 'stays').exec();
    await kv.kv.compact({ revision: header.revision, physical: true });
    proxy.restore();

    await waitFor(
      () => !listed(frontend, gone) && listed(frontend, added) && listed(frontend, stays),
      'the router to catch up with etcd after the compaction',
      WAIT,
    );
    // And the new watch follows later changes.
    const later = await entry('later', 'decode');
    await waitFor(() => listed(frontend, later), 'a change after the new watch', WAIT);
    assert.deepEqual(
      frontend.router
        .workers()
        .map((w) => w.address)
        .sort(),
      [added, later, stays].sort(),
    );
  });
});
