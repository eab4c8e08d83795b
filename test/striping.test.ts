// Striping, merging, prepared descriptor lists and warmup (issue 5's functional side; no timings here).
// Striped and merged transfers must stay byte-exact with 1..8 rails and sizes that line up with nothing.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { Agent, decodeMetadata, type MemoryRegion, type RemotePeer, type TransferDescriptor } from '../src/index.js';

const agents: Agent[] = [];
after(() => Promise.all(agents.map((a) => a.close())));

async function pair(provider: string, rails: number, stripeThreshold?: number) {
  const tag = `${provider}-${rails}-${stripeThreshold ?? 'd'}-${agents.length}`;
  const a = await Agent.create({ name: `stripe-a-${tag}`, provider, rails, logger: false, ...(stripeThreshold !== undefined ? { stripeThreshold } : {}) });
  const b = await Agent.create({ name: `stripe-b-${tag}`, provider, rails: Math.max(1, rails - 1), logger: false });
  agents.push(a, b);
  return { a, b };
}

function fill(region: MemoryRegion, seed: number): void {
  randomFillSync(region.bytes);
  region.bytes[0] = seed;
}

for (const provider of ['tcp', 'shm']) {
  describe(`striping over ${provider}`, () => {
    for (const rails of [1, 2, 3, 8]) {
      test(`${rails} rail(s): large odd-sized runs striped, small ones round-robin, byte-exact both ways`, async () => {
        const { a, b } = await pair(provider, rails, 64 << 10);
        const size = 6 << 20;
        const src = a.allocate(size);
        fill(src, rails);
        const dst = b.allocate(size);
        const back = a.allocate(size);
        const peer = a.loadRemoteMetadata(b.getLocalMetadata());
        // Odd sizes around the threshold, gaps between descriptors so nothing merges by accident.
        const descs: TransferDescriptor[] = [];
        let off = 0;
        for (const len of [1, 4095, 65535, 65536, 65537, 300_001, 1_048_583, 7, 2_000_003, 131_072]) {
          descs.push({ local: src, localOffset: off, remote: dst.id, remoteOffset: off + 3, length: len });
          off += len + 11;
        }
        const w = await a.write(peer, descs);
        for (const d of descs) {
          assert.equal(
            Buffer.compare(src.bytes.subarray(d.localOffset, d.localOffset + d.length), dst.bytes.subarray(d.remoteOffset, d.remoteOffset + d.length)),
            0,
          );
        }
        if (rails > 1) {
          assert.deepEqual(
            w.rails,
            Array.from({ length: rails }, (_, i) => i),
          );
          assert.ok(w.ops > descs.length, 'large runs were cut into one piece per rail');
        } else {
          assert.equal(w.ops, descs.length);
        }
        const r = await a.read(
          peer,
          descs.map((d) => ({ ...d, local: back })),
        );
        assert.equal(r.bytes, w.bytes);
        for (const d of descs)
          assert.equal(
            Buffer.compare(src.bytes.subarray(d.localOffset, d.localOffset + d.length), back.bytes.subarray(d.localOffset, d.localOffset + d.length)),
            0,
          );
      });
    }

    test('stripeThreshold 0 never stripes', async () => {
      const { a, b } = await pair(provider, 4, 0);
      const src = a.allocate(4 << 20);
      const dst = b.allocate(4 << 20);
      const peer = a.loadRemoteMetadata(b.getLocalMetadata());
      const w = await a.write(peer, [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 4 << 20 }]);
      assert.equal(w.ops, 1);
      assert.equal(w.rails.length, 1);
    });

    test('contiguous descriptors merge into one operation; gaps and other regions do not', async () => {
      const { a, b } = await pair(provider, 1);
      const src = a.allocate(1 << 20);
      fill(src, 9);
      const other = a.allocate(1 << 20);
      const dst = b.allocate(2 << 20);
      const peer = a.loadRemoteMetadata(b.getLocalMetadata());
      const block = 4096;
      const contiguous = Array.from({ length: 256 }, (_, i) => ({
        local: src,
        localOffset: i * block,
        remote: dst.id,
        remoteOffset: i * block,
        length: block,
      }));
      const w = await a.write(peer, contiguous);
      assert.equal(w.ops, 1);
      assert.equal(w.descriptors, 256);
      assert.equal(Buffer.compare(src.bytes, dst.bytes.subarray(0, 1 << 20)), 0);
      const broken = [
        { local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: block },
        { local: src, localOffset: block, remote: dst.id, remoteOffset: 2 * block, length: block }, // remote gap
        { local: other, localOffset: 2 * block, remote: dst.id, remoteOffset: 3 * block, length: block }, // other region
        { local: other, localOffset: 3 * block, remote: dst.id, remoteOffset: 4 * block, length: block }, // merges with the previous
      ];
      assert.equal((await a.write(peer, broken)).ops, 3);
    });
  });
}

describe('prepared descriptor lists', () => {
  let a: Agent;
  let b: Agent;
  let src: MemoryRegion;
  let dst: MemoryRegion;
  let peer: RemotePeer;
  const block = 4096;
  const count = 1024;
  const descs = () =>
    Array.from({ length: count }, (_, i) => ({ local: src, localOffset: i * block, remote: dst.id, remoteOffset: ((i * 7) % count) * block, length: block }));

  before(async () => {
    ({ a, b } = await pair('tcp', 2));
    src = a.allocate(count * block);
    fill(src, 1);
    dst = b.allocate(count * block);
    peer = a.loadRemoteMetadata(b.getLocalMetadata());
    await a.warmup(peer);
  });

  test('prepare once, post whole and by index, many times, READ and WRITE', async () => {
    const list = a.prepare(peer, descs());
    assert.equal(list.count, count);
    assert.equal(list.bytes, count * block);
    for (let round = 0; round < 3; round++) {
      src.bytes.fill(round + 1);
      const w = await a.post('WRITE', list);
      assert.equal(w.bytes, count * block);
      assert.ok(w.postMs >= 0);
      assert.ok(dst.bytes.every((x) => x === round + 1));
    }
    randomFillSync(dst.bytes);
    const picked = [5, 1000, 3, 512];
    src.bytes.fill(0);
    const r = await a.post('READ', list, { indices: picked, notification: 'picked' });
    assert.equal(r.bytes, picked.length * block);
    assert.equal(r.descriptors, picked.length);
    for (const i of picked) {
      const remote = ((i * 7) % count) * block;
      assert.equal(Buffer.compare(src.bytes.subarray(i * block, (i + 1) * block), dst.bytes.subarray(remote, remote + block)), 0);
    }
    list.release();
    list.release();
    await assert.rejects(a.post('WRITE', list), { code: 'KVF_ERR_CLOSED' });
  });

  test('bad selections and stale lists are coded errors', async () => {
    const list = a.prepare(peer, descs());
    await assert.rejects(a.post('WRITE', list, { indices: [count] }), { code: 'KVF_ERR_OUT_OF_RANGE' });
    await assert.rejects(a.post('WRITE', list, { indices: [4, 4] }), { code: 'KVF_ERR_OVERLAP' });
    await assert.rejects(a.post('SEND' as never, list), { code: 'KVF_ERR_INVALID_ARGUMENT' });
    // Sources may repeat (one block read into many places); destinations may not.
    const fanOut = a.prepare(peer, [
      { local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: block },
      { local: src, localOffset: 0, remote: dst.id, remoteOffset: block, length: block },
    ]);
    assert.equal((await a.post('WRITE', fanOut)).bytes, 2 * block);
    await assert.rejects(a.post('READ', fanOut), { code: 'KVF_ERR_OVERLAP' });
    assert.equal((await a.post('READ', fanOut, { indices: [1] })).bytes, block);
    const scratch = a.allocate(block);
    const onScratch = a.prepare(peer, [{ local: scratch, localOffset: 0, remote: dst.id, remoteOffset: 0, length: block }]);
    scratch.deregister();
    await assert.rejects(a.post('WRITE', onScratch), { code: 'KVF_ERR_UNKNOWN_REGION' });
    a.invalidateRemoteMetadata(peer);
    await assert.rejects(a.post('WRITE', list), { code: 'KVF_ERR_UNKNOWN_PEER' });
    peer = a.loadRemoteMetadata(b.getLocalMetadata());
  });

  test('the most rails an agent may have: a report names all 64 (the rails mask is wider than a double holds exactly)', async () => {
    const many = await Agent.create({ name: 'stripe-64', provider: 'shm', rails: 64, logger: false });
    const one = await Agent.create({ name: 'stripe-64-peer', provider: 'shm', logger: false });
    agents.push(many, one);
    one.allocate(4096);
    const r = await many.warmup(many.loadRemoteMetadata(one.getLocalMetadata()));
    assert.deepEqual(
      r.rails,
      Array.from({ length: 64 }, (_, i) => i),
    );
  });

  test('warmup connects every rail; the internal scratch region is not advertised', async () => {
    const { a: c, b: d } = await pair('tcp', 3);
    d.allocate(4096);
    const p = c.loadRemoteMetadata(d.getLocalMetadata());
    // One 1-byte READ on each of the 3 rails and on each rail's express lane (tcp has one), all completed.
    const r = await c.warmup(p);
    assert.deepEqual(r.rails, [0, 1, 2]);
    assert.equal(r.ops, r.bytes);
    assert.equal(r.ops, 6);
    assert.equal(decodeMetadata(c.getLocalMetadata()).regions.length, 0);
    const empty = await Agent.create({ name: 'stripe-empty', provider: 'tcp', logger: false });
    agents.push(empty);
    await assert.rejects(c.warmup(c.loadRemoteMetadata(empty.getLocalMetadata())), { code: 'KVF_ERR_UNKNOWN_REGION' });
  });
});
