// Multi-process data-path tests: real child processes (test/fixtures/peer.ts), each with its own Agent,
// move crypto-random data with one-sided WRITE and READ, and every byte is checked by sha256 in the
// process that owns the memory. Every scenario runs on both local providers, tcp (tcp;ofi_rxm) and shm:
//   - 64 MiB WRITE in blocks of 4 KiB..8 MiB, READ back into a third region, TransferReport contents;
//   - 112 transfers in flight at once (WRITEs and READs from one side, WRITEs from the other);
//   - WRITE notifications checked by the target inside its listener, and plain sendNotification;
//   - write() resolving only once the data is in the target's memory (target frozen with SIGSTOP);
//   - three agents: six directed WRITE streams at once, then six READ streams at once.
// Layouts (sizes, offsets, grouping) come from a seeded PRNG: set KVF_TEST_SEED to replay a run.
// The data itself comes from crypto.randomFillSync in the children.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';

import { decodeMetadata, type TransferReport } from '../src/index.js';
import {
  CHECK_PREFIX,
  closePeers,
  connectAll,
  prng,
  randomInt,
  readProcessMemory,
  shuffle,
  spawnPeers,
  zeroHash,
  type CheckRequest,
  type PeerProcess,
  type Range,
  type TransferSpec,
  type WireDescriptor,
} from './helpers/peers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = Number(process.env.KVF_TEST_SEED ?? 0x6b7666);
const TEST_TIMEOUT = 120_000;
/** Transfers fail instead of hanging; generous for a loaded 2-core machine. */
const TRANSFER_TIMEOUT = 60_000;

const PROVIDERS = [
  { name: 'tcp', stack: 'tcp;ofi_rxm' },
  { name: 'shm', stack: 'shm' },
] as const;

// ---- layout helpers -------------------------------------------------------------------------------

/**
 * Places ranges of `lengths` in one region, in the order `order`, with random gaps (0 to 8 KiB, odd
 * values included) before each; returns offsets indexed like `lengths`, the region size, and the gaps.
 */
function place(rng: () => number, lengths: number[], order: number[] = lengths.map((_, i) => i)) {
  const offsets = new Array<number>(lengths.length);
  const gaps: Range[] = [];
  let cursor = 0;
  for (const i of order) {
    const gap = rng() < 0.25 ? 0 : randomInt(rng, 1, 8 * KiB);
    if (gap > 0) gaps.push([cursor, gap]);
    cursor += gap;
    offsets[i] = cursor;
    cursor += lengths[i]!;
  }
  const tail = randomInt(rng, 1, 4 * KiB);
  gaps.push([cursor, tail]);
  return { offsets, size: cursor + tail, gaps };
}

function sum(ns: readonly number[]): number {
  return ns.reduce((a, b) => a + b, 0);
}

function gapLength(gaps: Range[]): number {
  return sum(gaps.map((g) => g[1]));
}

/** Cuts `items` into consecutive groups whose sizes cycle through `pattern`. */
function groups<T>(items: T[], pattern: number[]): T[][] {
  const out: T[][] = [];
  for (let i = 0, k = 0; i < items.length; k++) {
    const n = pattern[k % pattern.length]!;
    out.push(items.slice(i, i + n));
    i += n;
  }
  return out;
}

function spec(op: 'READ' | 'WRITE', peer: string, descs: WireDescriptor[], notification?: string): TransferSpec {
  const s: TransferSpec = { op, peer, descs, timeoutMs: TRANSFER_TIMEOUT };
  if (notification !== undefined) s.notification = notification;
  return s;
}

function checkReport(
  r: TransferReport,
  want: { op: 'READ' | 'WRITE'; peer: string; stack: string; descs: WireDescriptor[]; notified: boolean; rails: number },
): void {
  assert.equal(r.op, want.op);
  assert.equal(r.peer, want.peer);
  assert.equal(r.backend, 'LIBFABRIC');
  assert.equal(r.provider, want.stack);
  assert.equal(r.descriptors, want.descs.length);
  assert.equal(r.bytes, sum(want.descs.map((d) => d.length)));
  assert.equal(r.notified, want.notified);
  assert.ok(r.rails.length > 0, 'report names the rails that carried the transfer');
  for (const rail of r.rails) assert.ok(Number.isInteger(rail) && rail >= 0 && rail < want.rails, `rail ${rail} of ${want.rails}`);
  assert.ok(Number.isFinite(r.durationMs) && r.durationMs >= 0);
  assert.ok(Number.isFinite(r.gbps) && r.gbps >= 0);
}

/**
 * Asserts that the target's memory holds what was written, checked right after write() resolved. On a
 * mismatch it looks again a little later, to tell "the WRITE resolved before its data was in the target's
 * memory" from corruption; either way the test fails.
 */
async function assertLanded(target: PeerProcess, region: string, ranges: Range[][], expected: string[], what: string): Promise<void> {
  const hashes = () => Promise.all(ranges.map((r) => target.hash(region, r)));
  const now = await hashes();
  if (now.every((h, i) => h === expected[i])) return;
  const bad = now.flatMap((h, i) => (h === expected[i] ? [] : [i]));
  await delay(250);
  const later = await hashes();
  const settled = bad.every((i) => later[i] === expected[i]);
  assert.fail(
    `${what}: ${bad.length} of ${ranges.length} ranges differ from the source right after write() resolved (first: #${bad[0]}); ` +
      (settled ? "250 ms later they match: write() resolved before the data was in the target's memory" : 'they still differ 250 ms later: the data is wrong'),
  );
}

const localRanges = (descs: WireDescriptor[]): Range[] => descs.map((d) => [d.localOffset, d.length]);
const remoteRanges = (descs: WireDescriptor[]): Range[] => descs.map((d) => [d.remoteOffset, d.length]);

// ---- scenarios ----------------------------------------------------------------------------------------

for (const provider of PROVIDERS) {
  describe(`two processes over ${provider.name}`, { timeout: 4 * TEST_TIMEOUT }, () => {
    const spawned: PeerProcess[] = [];
    let a: PeerProcess;
    let b: PeerProcess;

    before(
      async () => {
        const ps = await spawnPeers([`${provider.name}-A`, `${provider.name}-B`], provider.name, spawned);
        a = ps[0]!;
        b = ps[1]!;
        for (const p of [a, b]) {
          assert.equal(p.agent!.provider, provider.stack);
          assert.ok(p.agent!.rails >= 1);
        }
      },
      { timeout: 60_000 },
    );
    after(() => closePeers(spawned), { timeout: 60_000 });

    test('WRITE then READ-back of 64 MiB in blocks of 4 KiB..8 MiB is byte-exact', { timeout: TEST_TIMEOUT }, async () => {
      const rng = prng(SEED ^ 0x1001);
      const cycle = [4 * KiB, 64 * KiB, MiB, 8 * MiB, 4 * KiB + 1, 3 * MiB + 5, 64 * KiB - 1, 8 * MiB - 1, 128 * KiB + 7, 2 * MiB, 12_345, 511 * KiB];
      const lengths: number[] = [];
      while (sum(lengths) < 64 * MiB) lengths.push(cycle[lengths.length % cycle.length]!);
      const total = sum(lengths);
      assert.ok(total >= 64 * MiB && Math.min(...lengths) === 4 * KiB && Math.max(...lengths) === 8 * MiB);
      const idx = lengths.map((_, i) => i);
      const src = place(rng, lengths); // A: source, in block order
      const dst = place(rng, lengths, shuffle(rng, idx)); // B: remote copy, another order
      const back = place(rng, lengths, shuffle(rng, idx)); // A: read-back, a third order

      await a.alloc('s1.src', src.size, 'random');
      await a.alloc('s1.back', back.size, 'zero');
      await b.alloc('s1.dst', dst.size, 'zero');
      const loaded = await connectAll([a, b]);
      assert.deepEqual(
        loaded
          .get(a.name)!
          .get(b.name)!
          .regions.find((r) => r.id === b.regionId('s1.dst')),
        { id: b.regionId('s1.dst'), length: dst.size },
        "A sees B's new region in its metadata",
      );

      const writes: WireDescriptor[] = idx.map((i) => ({
        local: 's1.src',
        localOffset: src.offsets[i]!,
        remote: b.regionId('s1.dst'),
        remoteOffset: dst.offsets[i]!,
        length: lengths[i]!,
      }));
      const common = { peer: b.name, stack: provider.stack, rails: a.agent!.rails };
      const srcHash = await a.hash('s1.src', localRanges(writes));
      for (const descs of groups(writes, [1, 4, 2, 7, 3])) {
        const report = await a.transfer(spec('WRITE', b.name, descs));
        checkReport(report, { ...common, op: 'WRITE', descs, notified: false });
      }

      await assertLanded(b, 's1.dst', [remoteRanges(writes)], [srcHash], 'remote copy of the 64 MiB');
      assert.equal(await b.hash('s1.dst', dst.gaps), zeroHash(gapLength(dst.gaps)), 'bytes around the written blocks stay zero');

      const reads: WireDescriptor[] = idx.map((i) => ({
        local: 's1.back',
        localOffset: back.offsets[i]!,
        remote: b.regionId('s1.dst'),
        remoteOffset: dst.offsets[i]!,
        length: lengths[i]!,
      }));
      let readBytes = 0;
      for (const descs of groups(reads, [5, 1, 3, 8])) {
        const report = await a.transfer(spec('READ', b.name, descs));
        checkReport(report, { ...common, op: 'READ', descs, notified: false });
        readBytes += report.bytes;
      }
      assert.equal(readBytes, total);
      assert.equal(await a.hash('s1.back', localRanges(reads)), srcHash, 'read-back equals the source');
      assert.equal(await a.hash('s1.back', back.gaps), zeroHash(gapLength(back.gaps)), 'READ wrote nothing outside its ranges');

      await Promise.all([a.free('s1.src'), a.free('s1.back'), b.free('s1.dst')]);
    });

    test('64 WRITEs, 32 READs and 16 WRITEs the other way, all in flight at once, are byte-exact', { timeout: TEST_TIMEOUT }, async () => {
      const rng = prng(SEED ^ 0x2002);
      const size = () => (rng() < 0.2 ? 4 * KiB : randomInt(rng, 4 * KiB, 640 * KiB)) + (rng() < 0.5 ? randomInt(rng, 1, 4095) : 0);
      // Each transfer has 1..3 descriptors; `owner[k]` says which transfer descriptor k belongs to.
      const plan = (count: number) => {
        const lengths: number[] = [];
        const owner: number[] = [];
        for (let t = 0; t < count; t++) {
          for (let n = randomInt(rng, 1, 3); n > 0; n--) {
            lengths.push(size());
            owner.push(t);
          }
        }
        const idx = lengths.map((_, i) => i);
        return { lengths, owner, local: place(rng, lengths, shuffle(rng, idx)), remote: place(rng, lengths, shuffle(rng, idx)) };
      };
      const aWrites = plan(64); // A.src -> B.dst
      const aReads = plan(32); // B.rsrc -> A.rdst
      const bWrites = plan(16); // B.out -> A.inbox

      await Promise.all([
        a.alloc('s2.src', aWrites.local.size, 'random'),
        a.alloc('s2.rdst', aReads.local.size, 'zero'),
        a.alloc('s2.inbox', bWrites.remote.size, 'zero'),
        b.alloc('s2.dst', aWrites.remote.size, 'zero'),
        b.alloc('s2.rsrc', aReads.remote.size, 'random'),
        b.alloc('s2.out', bWrites.local.size, 'random'),
      ]);
      await connectAll([a, b]);

      const build = (p: ReturnType<typeof plan>, local: string, remote: number) =>
        p.lengths.map((length, i) => ({ local, localOffset: p.local.offsets[i]!, remote, remoteOffset: p.remote.offsets[i]!, length }));
      const byTransfer = (p: ReturnType<typeof plan>, descs: WireDescriptor[]) => {
        const out: WireDescriptor[][] = [];
        descs.forEach((d, i) => (out[p.owner[i]!] ??= []).push(d));
        return out;
      };
      const wDescs = build(aWrites, 's2.src', b.regionId('s2.dst'));
      const rDescs = build(aReads, 's2.rdst', b.regionId('s2.rsrc'));
      const bDescs = build(bWrites, 's2.out', a.regionId('s2.inbox'));
      const wTransfers = byTransfer(aWrites, wDescs);
      const rTransfers = byTransfer(aReads, rDescs);
      const bTransfers = byTransfer(bWrites, bDescs);
      // Interleave reads among the writes so both kinds are posted together.
      const aSpecs: TransferSpec[] = [];
      wTransfers.forEach((descs, i) => {
        aSpecs.push(spec('WRITE', b.name, descs));
        if (i % 2 === 1) aSpecs.push(spec('READ', b.name, rTransfers[(i - 1) / 2]!));
      });
      const [srcW, srcB] = await Promise.all([a.hashEach('s2.src', localRanges(wDescs)), b.hashEach('s2.out', localRanges(bDescs))]);
      const [aReports, bReports] = await Promise.all([a.transferMany(aSpecs), b.transferMany(bTransfers.map((descs) => spec('WRITE', a.name, descs)))]);

      assert.equal(aReports.length, 96);
      aReports.forEach((r, i) =>
        checkReport(r, { op: aSpecs[i]!.op, peer: b.name, stack: provider.stack, descs: aSpecs[i]!.descs, notified: false, rails: a.agent!.rails }),
      );
      bReports.forEach((r, i) =>
        checkReport(r, { op: 'WRITE', peer: a.name, stack: provider.stack, descs: bTransfers[i]!, notified: false, rails: b.agent!.rails }),
      );

      const each = (rs: Range[]) => rs.map((r) => [r]);
      // Targets of the WRITEs first, right after the transfers resolved.
      await Promise.all([
        assertLanded(b, 's2.dst', each(remoteRanges(wDescs)), srcW, 'A -> B WRITEs'),
        assertLanded(a, 's2.inbox', each(remoteRanges(bDescs)), srcB, 'B -> A WRITEs'),
      ]);
      const [srcR, dstR] = await Promise.all([b.hashEach('s2.rsrc', remoteRanges(rDescs)), a.hashEach('s2.rdst', localRanges(rDescs))]);
      assert.deepEqual(dstR, srcR, 'every range A read from B landed intact at A');
      assert.equal(await b.hash('s2.dst', aWrites.remote.gaps), zeroHash(gapLength(aWrites.remote.gaps)));
      assert.equal(await a.hash('s2.rdst', aReads.local.gaps), zeroHash(gapLength(aReads.local.gaps)));
      assert.equal(await a.hash('s2.inbox', bWrites.remote.gaps), zeroHash(gapLength(bWrites.remote.gaps)));

      await Promise.all(['s2.src', 's2.rdst', 's2.inbox'].map((r) => a.free(r)).concat(['s2.dst', 's2.rsrc', 's2.out'].map((r) => b.free(r))));
    });

    test('a WRITE notification is delivered only after its data (24 rounds, checked on arrival)', { timeout: TEST_TIMEOUT }, async () => {
      const rng = prng(SEED ^ 0x3003);
      const SLOTS = 4;
      const SLOT = 6 * MiB;
      const WAVES = 6;
      await a.alloc('s3.src', SLOTS * SLOT, 'random');
      await b.alloc('s3.dst', SLOTS * SLOT, 'zero');
      await connectAll([a, b]);
      const dstId = b.regionId('s3.dst');

      const tags = new Set<string>();
      for (let wave = 0; wave < WAVES; wave++) {
        const specs: TransferSpec[] = [];
        for (let slot = 0; slot < SLOTS; slot++) {
          // 2..4 descriptors, several MiB in all, at offsets that differ from wave to wave; the slot is
          // rewritten every wave, so stale bytes from the previous wave would fail the check.
          const lengths = Array.from({ length: randomInt(rng, 2, 4) }, () => randomInt(rng, 512 * KiB, 1536 * KiB) + randomInt(rng, 0, 4095));
          const srcPlace = place(rng, lengths);
          const dstPlace = place(
            rng,
            lengths,
            shuffle(
              rng,
              lengths.map((_, i) => i),
            ),
          );
          assert.ok(srcPlace.size <= SLOT && dstPlace.size <= SLOT);
          const descs: WireDescriptor[] = lengths.map((length, i) => ({
            local: 's3.src',
            localOffset: slot * SLOT + srcPlace.offsets[i]!,
            remote: dstId,
            remoteOffset: slot * SLOT + dstPlace.offsets[i]!,
            length,
          }));
          await a.fill('s3.src', localRanges(descs)); // fresh data every round
          const tag = `w${wave}s${slot}`;
          tags.add(tag);
          const check: CheckRequest = { tag, region: dstId, ranges: remoteRanges(descs), sha256: await a.hash('s3.src', localRanges(descs)) };
          specs.push(spec('WRITE', b.name, descs, CHECK_PREFIX + JSON.stringify(check)));
        }
        const reports = await a.transferMany(specs);
        reports.forEach((r, i) =>
          checkReport(r, { op: 'WRITE', peer: b.name, stack: provider.stack, descs: specs[i]!.descs, notified: true, rails: a.agent!.rails }),
        );
        // The target checked each range inside its 'notification' listener; wait for this wave's checks
        // before the next wave overwrites the same slots.
        const { events, iterated } = await b.takeNotifications(SLOTS);
        for (const ev of events) {
          assert.equal(ev.from, a.name);
          assert.ok(ev.check, `notification ${ev.seq} carried a check`);
          assert.ok(ev.check.ok, `${ev.check.tag}: at notification time the data hashed ${ev.check.actual}, expected ${ev.check.expected}`);
          tags.delete(ev.check.tag);
        }
        assert.deepEqual(
          iterated,
          events.map((e) => ({ from: e.from, dataBase64: e.dataBase64 })),
          'notifications() yields what the event saw, in order',
        );
      }
      assert.deepEqual([...tags], [], 'every round was notified exactly once');
      await Promise.all([a.free('s3.src'), b.free('s3.dst')]);
    });

    test('sendNotification delivers the sender name and exact bytes, both ways', { timeout: TEST_TIMEOUT }, async () => {
      const rng = prng(SEED ^ 0x4004);
      const bytes = (n: number) => Uint8Array.from({ length: n }, () => randomInt(rng, 0, 255));
      const fromA = [Buffer.from('hello from A'), Buffer.from('ünïcödé ✓ 🚀'), bytes(1), bytes(4097), bytes(16 * KiB)];
      const fromB = [Buffer.from('hello from B'), bytes(777)];
      await Promise.all([
        (async () => {
          for (const d of fromA) await a.notify(b.name, d);
        })(),
        (async () => {
          for (const d of fromB) await b.notify(a.name, d);
        })(),
      ]);
      const [atB, atA] = await Promise.all([b.takeNotifications(fromA.length), a.takeNotifications(fromB.length)]);
      const expect = (from: string, list: Uint8Array[]) => list.map((d) => ({ from, dataBase64: Buffer.from(d).toString('base64') })).sort(byData);
      const byData = (x: { dataBase64: string }, y: { dataBase64: string }) => (x.dataBase64 < y.dataBase64 ? -1 : x.dataBase64 > y.dataBase64 ? 1 : 0);
      const seen = (l: { from: string; dataBase64: string; check?: unknown }[]) => l.map((n) => ({ from: n.from, dataBase64: n.dataBase64 })).sort(byData);
      assert.deepEqual(seen(atB.events), expect(a.name, fromA));
      assert.deepEqual(seen(atB.iterated), expect(a.name, fromA));
      assert.deepEqual(seen(atA.events), expect(b.name, fromB));
      assert.deepEqual(seen(atA.iterated), expect(b.name, fromB));
    });

    test("write() resolves only once its data is in the target's memory (target process frozen)", { timeout: TEST_TIMEOUT }, async (t) => {
      // With the target stopped (SIGSTOP) nothing in it can make progress. If write() resolves anyway, the
      // provider must already have put the bytes into the target's memory (as CMA does on shm), which the
      // parent checks by reading that memory through /proc/<pid>/mem. Otherwise write() must stay pending
      // until the target runs again. Either outcome is fine; resolving before the data is there is not.
      const sizes = [4 * KiB, 64 * KiB + 1, MiB];
      const offsets = sizes.map((_, i) => sum(sizes.slice(0, i)));
      await a.alloc('s5.src', sum(sizes), 'random');
      await b.alloc('s5.dst', sum(sizes), 'zero');
      await connectAll([a, b]);
      const dstId = b.regionId('s5.dst');
      const base = decodeMetadata(Buffer.from(await b.metadata(), 'base64')).regions.find((r) => r.id === dstId)!.base;
      try {
        readProcessMemory(b.pid!, base, 1);
      } catch (err) {
        t.skip(`cannot read /proc/${b.pid}/mem here: ${(err as Error).message}`);
        return;
      }
      const write = (i: number) =>
        a.transfer(spec('WRITE', b.name, [{ local: 's5.src', localOffset: offsets[i]!, remote: dstId, remoteOffset: offsets[i]!, length: sizes[i]! }]));
      // Warm-up: the first transfer to a peer may set up connections, which needs the target to run.
      await Promise.all(sizes.map((_, i) => write(i)));

      for (let i = 0; i < sizes.length; i++) {
        const range: Range = [offsets[i]!, sizes[i]!];
        await a.fill('s5.src', [range]);
        const expected = await a.hash('s5.src', [range]);
        let inMemoryWhenResolved: string | undefined;
        let pending!: Promise<TransferReport>;
        await b.frozen(async () => {
          pending = write(i);
          const outcome = await Promise.race([pending.then(() => 'resolved' as const), delay(500).then(() => 'pending' as const)]);
          if (outcome === 'resolved') {
            inMemoryWhenResolved = createHash('sha256')
              .update(readProcessMemory(b.pid!, base + BigInt(range[0]), range[1]))
              .digest('hex');
          }
        });
        await pending;
        if (inMemoryWhenResolved !== undefined) {
          assert.equal(
            inMemoryWhenResolved,
            expected,
            `a ${sizes[i]}-byte WRITE resolved while ${b.name} was stopped, but ${b.name}'s memory did not hold the data`,
          );
        }
        assert.equal(await b.hash('s5.dst', [range]), expected);
      }
      await Promise.all([a.free('s5.src'), b.free('s5.dst')]);
    });
  });

  describe(`three processes over ${provider.name}`, { timeout: 3 * TEST_TIMEOUT }, () => {
    const spawned: PeerProcess[] = [];
    let peers: PeerProcess[];
    const SLICE = 6 * MiB + 12_345; // per directed stream
    /** Index of `other` among `self`'s two peers: which slice of self's regions belongs to that peer. */
    const slot = (self: number, other: number) => (other < self ? other : other - 1);
    const sliceRange = (k: number): Range => [k * SLICE, SLICE];
    const pairs = [0, 1, 2].flatMap((i) => [0, 1, 2].filter((j) => j !== i).map((j) => [i, j] as const));

    before(
      async () => {
        peers = await spawnPeers(
          [0, 1, 2].map((i) => `${provider.name}-P${i}`),
          provider.name,
          spawned,
        );
        await Promise.all(
          peers.map(async (p) => {
            await p.alloc('src', 2 * SLICE, 'random'); // slice slot(i, j): the data i sends to j
            await p.alloc('dst', 2 * SLICE, 'zero'); // slice slot(j, i): what j wrote here
            await p.alloc('back', 2 * SLICE, 'zero'); // slice slot(i, j): what i read from j
          }),
        );
        const loaded = await connectAll(peers);
        for (const p of peers) assert.equal(loaded.get(p.name)!.size, 2);
      },
      { timeout: 60_000 },
    );
    after(() => closePeers(spawned), { timeout: 60_000 });

    /** i's stream to or from j: the slice cut into 6 pieces of varied sizes, sent as 3 transfers of 2. */
    function stream(rng: () => number, op: 'READ' | 'WRITE', i: number, j: number): TransferSpec[] {
      const cuts = [0, SLICE, ...Array.from({ length: 5 }, () => randomInt(rng, 1, SLICE - 1))].sort((x, y) => x - y);
      const mine = slot(i, j);
      const theirs = slot(j, i);
      const remote = peers[j]!.regionId(op === 'WRITE' ? 'dst' : 'src');
      const descs: WireDescriptor[] = [];
      for (let k = 0; k + 1 < cuts.length; k++) {
        const length = cuts[k + 1]! - cuts[k]!;
        if (length === 0) continue;
        descs.push({
          local: op === 'WRITE' ? 'src' : 'back',
          localOffset: mine * SLICE + cuts[k]!,
          remote,
          remoteOffset: theirs * SLICE + cuts[k]!,
          length,
        });
      }
      return groups(shuffle(rng, descs), [2]).map((d) => spec(op, peers[j]!.name, d));
    }

    async function runAll(op: 'READ' | 'WRITE', seed: number): Promise<void> {
      const rng = prng(seed);
      const specs = peers.map((_, i) => pairs.filter(([x]) => x === i).flatMap(([, j]) => stream(rng, op, i, j)));
      // The parent posts to all three children at once; each child posts its streams in one tick.
      const reports = await Promise.all(peers.map((p, i) => p.transferMany(specs[i]!)));
      reports.forEach((list, i) =>
        list.forEach((r, k) => {
          const s = specs[i]![k]!;
          checkReport(r, { op, peer: s.peer, stack: provider.stack, descs: s.descs, notified: false, rails: peers[i]!.agent!.rails });
        }),
      );
      assert.equal(sum(reports.flat().map((r) => r.bytes)), 6 * SLICE);
    }

    test('six directed WRITE streams at once land byte-exact in distinct slices', { timeout: TEST_TIMEOUT }, async () => {
      const sent = await Promise.all(pairs.map(([i, j]) => peers[i]!.hash('src', [sliceRange(slot(i, j))])));
      await runAll('WRITE', SEED ^ 0x5005);
      await Promise.all(
        pairs.map(([i, j], k) => assertLanded(peers[j]!, 'dst', [[sliceRange(slot(j, i))]], [sent[k]!], `${peers[i]!.name} -> ${peers[j]!.name}`)),
      );
    });

    test('six directed READ streams at once are byte-exact', { timeout: TEST_TIMEOUT }, async () => {
      await runAll('READ', SEED ^ 0x6006);
      await Promise.all(
        pairs.map(async ([i, j]) => {
          const [there, here] = await Promise.all([peers[j]!.hash('src', [sliceRange(slot(j, i))]), peers[i]!.hash('back', [sliceRange(slot(i, j))])]);
          assert.equal(here, there, `${peers[i]!.name} <- ${peers[j]!.name}`);
        }),
      );
    });
  });
}
