// The express lane (small transfers posted and completed on the JS thread) and busy polling: which transfers
// take the lane, that they stay byte-exact alone and by the hundred, that the event loop still turns while a
// caller awaits them back to back, and that closing with some in flight settles every one. No timings.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { Agent, KvfError, type AgentOptions, type MemoryRegion, type TransferDescriptor } from '../src/index.js';

const agents: Agent[] = [];
after(() => Promise.all(agents.map((a) => a.close())));

async function pair(provider: string, initiator: Partial<AgentOptions> = {}, target: Partial<AgentOptions> = {}) {
  const tag = `${provider}-${agents.length}`;
  // The fast path is off: these agents share a process, and the lane under test is the fabric's.
  const a = await Agent.create({ name: `express-a-${tag}`, provider, logger: false, fastPath: false, ...initiator });
  const b = await Agent.create({ name: `express-b-${tag}`, provider, logger: false, fastPath: false, ...target });
  agents.push(a, b);
  const src = a.allocate(4 << 20);
  randomFillSync(src.bytes);
  const dst = b.allocate(4 << 20);
  randomFillSync(dst.bytes);
  const peer = a.loadRemoteMetadata(b.getLocalMetadata());
  return { a, b, src, dst, peer };
}

function same(x: MemoryRegion, xOff: number, y: MemoryRegion, yOff: number, length: number): boolean {
  return Buffer.compare(x.bytes.subarray(xOff, xOff + length), y.bytes.subarray(yOff, yOff + length)) === 0;
}

// shm has no express lane (a peer killed inside shm's shared-memory lock would freeze the posting thread).
for (const provider of ['tcp']) {
  describe(`express lane over ${provider}`, () => {
    test('small transfers take it and stay byte-exact; large ones, notified ones and expressMaxBytes 0 do not', async () => {
      const { a, b, src, dst, peer } = await pair(provider);
      // Odd sizes and offsets up to the 64 KiB default, several descriptors per transfer.
      const descs: TransferDescriptor[] = [
        { local: src, localOffset: 1, remote: dst.id, remoteOffset: 7, length: 1 },
        { local: src, localOffset: 4099, remote: dst.id, remoteOffset: 9001, length: 4093 },
        { local: src, localOffset: 70_001, remote: dst.id, remoteOffset: 80_003, length: 60_000 },
      ];
      const w = await a.write(peer, descs);
      assert.equal(w.express, true);
      for (const d of descs) assert.ok(same(src, d.localOffset, dst, d.remoteOffset, d.length));
      const back = a.allocate(1 << 20);
      const r = await a.read(
        peer,
        descs.map((d) => ({ ...d, local: back })),
      );
      assert.equal(r.express, true);
      assert.equal(r.bytes, w.bytes);
      for (const d of descs) assert.ok(same(back, d.localOffset, dst, d.remoteOffset, d.length));

      const big = await a.read(peer, [{ local: back, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 1 << 20 }]);
      assert.equal(big.express, false, 'over expressMaxBytes: the rail threads carry it');
      assert.ok(same(back, 0, dst, 0, 1 << 20));

      // The iterator (unlike an 'notification' listener) keeps the process alive until the message arrives.
      const incoming = b.notifications();
      const got = incoming.next();
      const noted = await a.write(peer, [descs[0]!], { notification: 'here' });
      assert.equal(noted.express, false, 'a notification must follow the data through the rail thread');
      assert.equal(Buffer.from((await got).value!.data).toString(), 'here');
      await incoming.return?.();

      const { a: off, src: offSrc, dst: offDst, peer: offPeer } = await pair(provider, { expressMaxBytes: 0 });
      const o = await off.write(offPeer, [{ local: offSrc, localOffset: 0, remote: offDst.id, remoteOffset: 0, length: 4096 }]);
      assert.equal(o.express, false);
      assert.ok(same(offSrc, 0, offDst, 0, 4096));
    });

    test('hundreds in flight at once all complete byte-exact (completions reaped on later loop turns)', async () => {
      const { a, src, dst, peer } = await pair(provider);
      const block = 4096;
      const n = 512;
      const reports = await Promise.all(
        Array.from({ length: n }, (_, i) =>
          a.write(peer, [{ local: src, localOffset: i * block, remote: dst.id, remoteOffset: (n - 1 - i) * block, length: block }]),
        ),
      );
      assert.ok(reports.every((r) => r.express));
      for (let i = 0; i < n; i++) assert.ok(same(src, i * block, dst, (n - 1 - i) * block, block), `block ${i}`);
    });

    test('awaiting small transfers back to back still lets the event loop turn', async () => {
      const { a, src, dst, peer } = await pair(provider);
      let timerRan = false;
      let transfersAfterTimer = 0;
      setTimeout(() => {
        timerRan = true;
      }, 0);
      const prepared = a.prepare(peer, [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 4096 }]);
      // Completions that land inside the post call resolve in microtasks, which alone would starve the timer.
      for (let i = 0; i < 20_000 && transfersAfterTimer < 100; i++) {
        await a.post('READ', prepared);
        if (timerRan) transfersAfterTimer++;
      }
      prepared.release();
      assert.ok(timerRan, 'a timer fired while the caller kept awaiting transfers');
      assert.equal(transfersAfterTimer, 100);
    });

    test('close() with express transfers in flight settles every one and closes', async () => {
      const { a, src, dst, peer } = await pair(provider);
      const pending = Array.from({ length: 200 }, (_, i) =>
        a.read(peer, [{ local: src, localOffset: i * 4096, remote: dst.id, remoteOffset: i * 4096, length: 4096 }]).then(
          (r) => ({ ok: true as const, r }),
          (err: unknown) => ({ ok: false as const, err }),
        ),
      );
      await a.close();
      const outcomes = await Promise.all(pending);
      for (const o of outcomes) {
        if (!o.ok) assert.equal((o.err as KvfError).code, 'KVF_ERR_CLOSED');
      }
    });

    test('a busy-polling target serves small READs and large WRITEs byte-exact', async () => {
      const { a, src, dst, peer } = await pair(provider, {}, { busyPollUs: 2000 });
      for (let i = 0; i < 50; i++) {
        const off = i * 8192 + 3;
        await a.read(peer, [{ local: src, localOffset: off, remote: dst.id, remoteOffset: off, length: 4096 }]);
        assert.ok(same(src, off, dst, off, 4096));
      }
      await a.write(peer, [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 4 << 20 }]);
      assert.ok(same(src, 0, dst, 0, 4 << 20));
    });
  });
}

test('shm: no express lane; small transfers go through the rail threads, byte-exact', async () => {
  const { a, src, dst, peer } = await pair('shm');
  assert.equal(a.info.expressMaxBytes, 0);
  const r = await a.read(peer, [{ local: src, localOffset: 5, remote: dst.id, remoteOffset: 9, length: 4096 }]);
  assert.equal(r.express, false);
  assert.ok(same(src, 5, dst, 9, 4096));
});

test('shm: a lone small transfer is polled for on the JS thread; awaited one by one, in bursts and with busy rails, none is lost', async () => {
  // The poll spins for a lone rail-thread transfer and the rail thread then pushes without waking the loop:
  // a completion lost between the two would hang here. Busy-polling rails also yield while the JS thread spins.
  for (const busyPollUs of [0, 1000]) {
    const { a, b, src, dst, peer } = await pair('shm', { busyPollUs }, { busyPollUs });
    let timerRan = false;
    setTimeout(() => {
      timerRan = true;
    }, 0);
    for (let i = 0; i < 2000; i++) {
      const off = (i % 500) * 8192 + (i % 7);
      const r = await a.read(peer, [{ local: src, localOffset: off, remote: dst.id, remoteOffset: off + 4096, length: 4096 }]);
      assert.equal(r.bytes, 4096);
      if (i % 97 === 0) assert.ok(same(src, off, dst, off + 4096, 4096), `read ${i}`);
    }
    assert.ok(timerRan, 'a timer fired while the caller kept awaiting transfers');
    for (let round = 0; round < 100; round++) {
      await a.write(peer, [{ local: src, localOffset: round * 64, remote: dst.id, remoteOffset: round * 64, length: 64 }]);
      const burst = Array.from({ length: 1 + (round % 9) }, (_, k) => {
        const off = (1 << 20) + k * 4096;
        return a.write(peer, [{ local: src, localOffset: off, remote: dst.id, remoteOffset: off, length: 4096 }]);
      });
      assert.equal((await Promise.all(burst)).length, 1 + (round % 9));
    }
    assert.ok(same(src, 0, dst, 0, 6400) && same(src, 1 << 20, dst, 1 << 20, 9 * 4096));
    // A small notified write: its notification follows on the rail thread while the poll spins for it.
    const incoming = b.notifications();
    const got = incoming.next();
    await a.write(peer, [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 4096 }], { notification: 'done' });
    assert.equal(Buffer.from((await got).value!.data).toString(), 'done');
    await incoming.return?.();
  }
});

test('expressMaxBytes and busyPollUs are checked', async () => {
  for (const bad of [{ expressMaxBytes: -1 }, { expressMaxBytes: 1.5 }, { busyPollUs: -1 }, { busyPollUs: 20_000_000 }, { busyPollUs: 0.5 }]) {
    await assert.rejects(Agent.create({ name: 'express-bad', provider: 'tcp', logger: false, ...bad }), { code: 'KVF_ERR_INVALID_ARGUMENT' });
  }
});
