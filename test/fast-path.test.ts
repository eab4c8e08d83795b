// The same-host fast path: a peer process on this host is reached by cross-memory attach (one copy, no
// provider), chosen automatically, visible in every report (`path: 'cma'`), with an explicit opt-out, and a
// coded error when the peer is gone. The rest of the suite runs with KVF_FAST_PATH=0 (scripts/run-tests.mjs)
// so that it exercises the providers; these tests turn it on explicitly.
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { Agent, decodeMetadata, encodeMetadata } from '../src/index.js';
import { fastPathEnabled } from '../src/fabric/host.js';
import { PeerProcess, closePeers, type Range } from './helpers/peers.js';

const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');
// Odd sizes and gaps in an 8 MiB pool, so nothing lines up with pages: small ones and ones large enough for
// the copier threads.
const ODD_RANGES: Range[] = [
  [3, 4093],
  [5000, 1 << 20],
  [(1 << 20) + 9000, 3_000_001],
  [(6 << 20) + 1, 17],
];

for (const provider of ['tcp', 'shm']) {
  describe(`fast path beside ${provider}`, () => {
    const children: PeerProcess[] = [];
    const agents: Agent[] = [];
    after(async () => {
      await Promise.all(agents.map((a) => a.close()));
      await closePeers(children);
    });

    async function target(label: string) {
      const child = await PeerProcess.spawn(label);
      children.push(child);
      await child.create(label, provider);
      const pool = await child.alloc('pool', 8 << 20, 'random', false); // private memory: cross-memory attach
      return { child, pool };
    }

    test('a peer process on this host is read and written by cross-memory attach, byte-exact, notification after', async () => {
      const { child, pool } = await target(`fp-${provider}-1`);
      const a = await Agent.create({ name: `fp-init-${provider}`, provider, fastPath: true, logger: false });
      agents.push(a);
      const peer = a.loadRemoteMetadata(Buffer.from(await child.metadata(), 'base64'));
      assert.equal(peer.path, 'cma');
      const local = a.allocate(8 << 20);
      const ranges = ODD_RANGES;
      const descs = ranges.map(([off, len]) => ({ local, localOffset: off, remote: pool, remoteOffset: off, length: len }));
      const r = await a.read(peer, descs, { notification: 'pulled' });
      assert.equal(r.path, 'cma');
      assert.deepEqual(r.rails, []);
      assert.equal(
        r.bytes,
        ranges.reduce((s, [, l]) => s + l, 0),
      );
      assert.equal(sha(Buffer.concat(ranges.map(([o, l]) => local.bytes.subarray(o, o + l)))), await child.hash('pool', ranges));
      const { iterated } = await child.takeNotifications(1);
      assert.equal(Buffer.from(iterated[0]!.dataBase64, 'base64').toString(), 'pulled');

      randomFillSync(local.bytes);
      const w = await a.write(peer, descs);
      assert.equal(w.path, 'cma');
      assert.equal(sha(Buffer.concat(ranges.map(([o, l]) => local.bytes.subarray(o, o + l)))), await child.hash('pool', ranges));

      // Prepared lists take the same path.
      const list = a.prepare(peer, descs);
      randomFillSync(local.bytes);
      assert.equal((await a.post('WRITE', list, { indices: [2, 0] })).path, 'cma');
      assert.equal(
        sha(Buffer.concat([2, 0].map((i) => local.bytes.subarray(ranges[i]![0], ranges[i]![0] + ranges[i]![1])))),
        await child.hash('pool', [ranges[2]!, ranges[0]!]),
      );

      // Small transfers (≤ expressMaxBytes) are copied on the posting thread; large ones by the copier threads.
      randomFillSync(local.bytes);
      const small = await a.post('WRITE', list, { indices: [3, 0] });
      assert.deepEqual([small.path, small.express], ['cma', true]);
      assert.equal(
        sha(Buffer.concat([3, 0].map((i) => local.bytes.subarray(ranges[i]![0], ranges[i]![0] + ranges[i]![1])))),
        await child.hash('pool', [ranges[3]!, ranges[0]!]),
      );
      assert.equal(w.express, false);
      list.release();
    });

    test('fastPath: false keeps the transfer on the provider', async () => {
      const { child, pool } = await target(`fp-${provider}-2`);
      const a = await Agent.create({ name: `fp-off-${provider}`, provider, fastPath: false, logger: false });
      agents.push(a);
      const peer = a.loadRemoteMetadata(Buffer.from(await child.metadata(), 'base64'));
      assert.equal(peer.path, 'fabric');
      const local = a.allocate(1 << 20);
      const r = await a.read(peer, [{ local, localOffset: 0, remote: pool, remoteOffset: 0, length: 1 << 20 }]);
      assert.equal(r.path, 'fabric');
      assert.deepEqual(r.rails, [0]);
      assert.equal(sha(local.bytes), await child.hash('pool', [[0, 1 << 20]]));
    });

    test('a peer that died fails the transfer with KVF_ERR_FAST_PATH instead of hanging', async () => {
      const { child, pool } = await target(`fp-${provider}-3`);
      const a = await Agent.create({ name: `fp-dead-${provider}`, provider, fastPath: true, logger: false });
      agents.push(a);
      const peer = a.loadRemoteMetadata(Buffer.from(await child.metadata(), 'base64'));
      const local = a.allocate(4096);
      child.kill();
      await child.close();
      await assert.rejects(a.read(peer, [{ local, localOffset: 0, remote: pool, remoteOffset: 0, length: 4096 }]), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'KVF_ERR_FAST_PATH');
        assert.match(err.message, /pid \d+/);
        return true;
      });
    });
  });
}

// Shared memory (allocate({ shared: true }), a memfd): a peer on this host maps it and copies with memcpy
// instead of cross-memory attach; reports say `path: 'mapped'`.
describe("fast path through a mapping of the peer's shared memory", () => {
  const children: PeerProcess[] = [];
  const agents: Agent[] = [];
  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await closePeers(children);
  });

  async function pair(label: string, shared = true) {
    const child = await PeerProcess.spawn(label);
    children.push(child);
    await child.create(label, 'tcp');
    const pool = await child.alloc('pool', 8 << 20, 'random', shared);
    const a = await Agent.create({ name: `${label}-init`, provider: 'tcp', fastPath: true, logger: false });
    agents.push(a);
    return { child, pool, a, metadata: Buffer.from(await child.metadata(), 'base64') };
  }

  test('reads and writes copy through the mapping, byte-exact, small ones inline, large ones on the copier threads', async () => {
    const { child, pool, a, metadata } = await pair('map-1');
    const peer = a.loadRemoteMetadata(metadata);
    assert.deepEqual([peer.path, peer.mappedRegions], ['cma', 1]);
    const local = a.allocate(8 << 20, { shared: false });
    assert.equal(local.shared, false);
    const ranges = ODD_RANGES;
    const descs = ranges.map(([off, len]) => ({ local, localOffset: off, remote: pool, remoteOffset: off, length: len }));
    const r = await a.read(peer, descs, { notification: 'mapped' });
    assert.deepEqual([r.path, r.express], ['mapped', false]);
    assert.equal(sha(Buffer.concat(ranges.map(([o, l]) => local.bytes.subarray(o, o + l)))), await child.hash('pool', ranges));
    const { iterated } = await child.takeNotifications(1);
    assert.equal(Buffer.from(iterated[0]!.dataBase64, 'base64').toString(), 'mapped');

    randomFillSync(local.bytes);
    assert.equal((await a.write(peer, descs)).path, 'mapped');
    assert.equal(sha(Buffer.concat(ranges.map(([o, l]) => local.bytes.subarray(o, o + l)))), await child.hash('pool', ranges));

    const list = a.prepare(peer, descs);
    randomFillSync(local.bytes);
    const small = await a.post('WRITE', list, { indices: [3, 0] });
    assert.deepEqual([small.path, small.express], ['mapped', true]);
    assert.equal(
      sha(Buffer.concat([3, 0].map((i) => local.bytes.subarray(ranges[i]![0], ranges[i]![0] + ranges[i]![1])))),
      await child.hash('pool', [ranges[3]!, ranges[0]!]),
    );
    const back = a.allocate(1 << 16);
    const read = await a.post('READ', a.prepare(peer, [{ local: back, localOffset: 1, remote: pool, remoteOffset: 3, length: 4093 }]));
    assert.deepEqual([read.path, read.express], ['mapped', true]);
    assert.equal(sha(back.bytes.subarray(1, 4094)), await child.hash('pool', [[3, 4093]]));
    list.release();
  });

  test('memory that is not shared, or whose share does not check out, is copied by cross-memory attach', async () => {
    const { pool, a, metadata } = await pair('map-2', false);
    const plain = a.loadRemoteMetadata(metadata);
    assert.deepEqual([plain.path, plain.mappedRegions], ['cma', 0]);
    const local = a.allocate(1 << 16);
    assert.equal((await a.read(plain, [{ local, localOffset: 0, remote: pool, remoteOffset: 0, length: 4096 }])).path, 'cma');

    const other = await pair('map-3');
    // Another inode under the same fd number (the owner closed and reused it, or a lie): refused, not mapped.
    const desc = decodeMetadata(other.metadata);
    desc.regions[0]!.share = { ...desc.regions[0]!.share!, inode: desc.regions[0]!.share!.inode + 1n };
    const lied = other.a.loadRemoteMetadata(encodeMetadata(desc));
    assert.deepEqual([lied.path, lied.mappedRegions], ['cma', 0]);
    const dst = other.a.allocate(1 << 16);
    const r = await other.a.read(lied, [{ local: dst, localOffset: 0, remote: other.pool, remoteOffset: 0, length: 1 << 16 }]);
    assert.equal(r.path, 'cma');
    assert.equal(sha(dst.bytes), await other.child.hash('pool', [[0, 1 << 16]]));
  });

  test('a peer that died fails a mapped transfer with KVF_ERR_FAST_PATH, though its memory is still mapped here', async () => {
    const { child, pool, a, metadata } = await pair('map-4');
    const peer = a.loadRemoteMetadata(metadata);
    assert.equal(peer.mappedRegions, 1);
    const local = a.allocate(1 << 20);
    assert.equal((await a.read(peer, [{ local, localOffset: 0, remote: pool, remoteOffset: 0, length: 4096 }])).path, 'mapped');
    child.kill();
    await child.close();
    await new Promise((r) => setTimeout(r, 5)); // past the liveness check's 100 µs of trust
    for (const length of [4096, 1 << 20]) {
      await assert.rejects(a.read(peer, [{ local, localOffset: 0, remote: pool, remoteOffset: 0, length }]), (err: Error & { code?: string }) => {
        assert.equal(err.code, 'KVF_ERR_FAST_PATH');
        assert.match(err.message, /gone/);
        return true;
      });
    }
  });

  test("allocate's shared option is checked", async () => {
    const a = await Agent.create({ name: 'map-opt', provider: 'tcp', logger: false });
    agents.push(a);
    assert.equal(a.allocate(4096, { shared: true }).shared, true);
    assert.throws(() => a.allocate(4096, { shared: 'yes' as never }), { code: 'KVF_ERR_INVALID_ARGUMENT' });
  });
});

describe('fast path selection', () => {
  test('on by default, off with KVF_FAST_PATH=0, the option wins over the environment', () => {
    assert.equal(fastPathEnabled(undefined, {}), true);
    assert.equal(fastPathEnabled(undefined, { KVF_FAST_PATH: '0' }), false);
    assert.equal(fastPathEnabled(true, { KVF_FAST_PATH: '0' }), true);
    assert.equal(fastPathEnabled(false, {}), false);
  });

  test('two agents of one process use it too', async () => {
    const a = await Agent.create({ name: 'fp-self-a', provider: 'tcp', fastPath: true, logger: false });
    const b = await Agent.create({ name: 'fp-self-b', provider: 'tcp', fastPath: true, logger: false });
    try {
      const src = randomFillSync(b.allocate(1 << 16, { shared: false }).bytes);
      const region = b.loadRemoteMetadata(a.getLocalMetadata()); // b knows a (unused) — metadata works both ways
      assert.equal(region.path, 'fabric'); // a has no regions yet: nothing to probe, so the fabric
      const peer = a.loadRemoteMetadata(b.getLocalMetadata());
      assert.equal(peer.path, 'cma');
      const dst = a.allocate(1 << 16);
      const r = await a.read(peer, [{ local: dst, localOffset: 0, remote: peer.regions[0]!.id, remoteOffset: 0, length: 1 << 16 }]);
      assert.equal(r.path, 'cma');
      assert.equal(Buffer.compare(dst.bytes, src), 0);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });
});
