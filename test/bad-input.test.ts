// Bad input: every misuse of the public API fails with a KvfError carrying its exact stable code (and a
// promise-returning method rejects rather than throws), nothing reaches the fabric, and the agent stays
// usable: each test ends with a correct write + read round trip whose bytes are checked.
// Runs on both local providers, tcp (tcp;ofi_rxm) and shm, with the agents in this process: A loads B's
// metadata and moves bytes to and from B's memory.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import {
  Agent,
  ERROR_CODES,
  KvfError,
  decodeMetadata,
  encodeMetadata,
  type AgentOptions,
  type ErrorCode,
  type MemoryRegion,
  type RemotePeer,
  type TransferDescriptor,
} from '../src/index.js';
import { METADATA_VERSION, crc32 } from '../src/fabric/metadata.js';
import { prng } from './helpers/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TEST_TIMEOUT = 30_000;
/** Transfers that should succeed fail instead of hanging. */
const XFER = { timeoutMs: 15_000 };
// shm first, so that its agents have one-digit numbers in their shm endpoint names; the
// 'shm addresses of different lengths' test checks agents whose names differ in length.
const PROVIDERS = [
  { name: 'shm', other: 'tcp' },
  { name: 'tcp', other: 'shm' },
] as const;

/** Region sizes: A's source and sink, B's target. The round trip uses the last 4 KiB of each. */
const REGION = 64 * KiB;
const RT_LEN = 4 * KiB;
const RT_OFF = REGION - RT_LEN;

// ---- assertion helpers ----------------------------------------------------------------------------

function show(err: unknown): string {
  if (err instanceof Error) return `${err.constructor.name}${'code' in err ? ` ${String(err.code)}` : ''}: ${err.message}`;
  return String(err);
}

function checkError(err: unknown, code: ErrorCode, label: string): KvfError {
  assert.ok(err instanceof KvfError, `${label}: expected KvfError ${code}, got ${show(err)}`);
  assert.equal(err.name, 'KvfError', label);
  assert.equal(err.code, code, `${label}: expected ${code}, got ${err.code}: ${err.message}`);
  assert.ok(Object.hasOwn(ERROR_CODES, err.code), `${label}: ${err.code} is not in ERROR_CODES`);
  assert.ok(err.message.length > 0, `${label}: empty message`);
  return err;
}

/** A synchronous API call must throw KvfError `code`. */
function throws(fn: () => unknown, code: ErrorCode, label: string): KvfError {
  try {
    fn();
  } catch (err) {
    return checkError(err, code, label);
  }
  assert.fail(`${label}: expected KvfError ${code}, but nothing was thrown`);
}

/** A promise-returning API call must return a promise (not throw) that rejects with KvfError `code`. */
async function rejects(fn: () => Promise<unknown>, code: ErrorCode, label: string): Promise<KvfError> {
  let p: Promise<unknown>;
  try {
    p = fn();
  } catch (err) {
    assert.fail(`${label}: threw synchronously (${show(err)}); expected a promise rejecting with ${code}`);
  }
  assert.ok(p instanceof Promise, `${label}: did not return a promise`);
  let settled: { ok: true } | { ok: false; err: unknown };
  try {
    await p;
    settled = { ok: true };
  } catch (err) {
    settled = { ok: false, err };
  }
  if (settled.ok) assert.fail(`${label}: resolved; expected a rejection with ${code}`);
  return checkError(settled.err, code, label);
}

function sameBytes(actual: Uint8Array, expected: Uint8Array, label: string): void {
  assert.equal(actual.length, expected.length, `${label}: length`);
  if (Buffer.compare(actual, expected) !== 0) {
    let i = 0;
    while (actual[i] === expected[i]) i++;
    assert.fail(`${label}: first difference at byte ${i}: ${actual[i]} != ${expected[i]}`);
  }
}

const random = (n: number): Uint8Array => randomFillSync(new Uint8Array(n));

/** Metadata blob with its CRC recomputed after an edit, so only the edited field is wrong. */
function withCrc(blob: Uint8Array): Buffer {
  const out = Buffer.from(blob);
  out.writeUInt32LE(crc32(out, 0, out.length - 4), out.length - 4);
  return out;
}

// ---- fixture --------------------------------------------------------------------------------------

interface Ctx {
  provider: string;
  a: Agent;
  b: Agent;
  /** Third agent of the same provider: owns RemotePeer / MemoryRegion handles that are not A's. */
  c: Agent;
  /** Agent of the other provider, for provider mismatch. */
  other: Agent;
  srcA: MemoryRegion;
  dstA: MemoryRegion;
  tgtB: MemoryRegion;
  /** Second remote region, for "same offsets in another region is no overlap". */
  tgtB2: MemoryRegion;
}

function create(name: string, provider: string, extra: Partial<AgentOptions> = {}): Promise<Agent> {
  return Agent.create({ name, provider, logger: false, closeTimeoutMs: 5_000, ...extra });
}

/** A's current handle on B (tests invalidate and reload it). */
function peerB(ctx: Ctx): RemotePeer {
  return ctx.a.peer('b') ?? ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
}

/** A valid descriptor over the first bytes of srcA / tgtB, with fields overridden. */
function desc(ctx: Ctx, over: Partial<Record<keyof TransferDescriptor, unknown>> = {}): TransferDescriptor {
  return { local: ctx.srcA, localOffset: 0, remote: ctx.tgtB.id, remoteOffset: 0, length: 16, ...over } as TransferDescriptor;
}

/** The agent still works: fresh random bytes go A -> B by WRITE and come back B -> A by READ. */
async function roundTrip(ctx: Ctx): Promise<void> {
  const data = random(RT_LEN);
  ctx.srcA.bytes.set(data, RT_OFF);
  const peer = peerB(ctx);
  const w = await ctx.a.write(peer, [{ local: ctx.srcA, localOffset: RT_OFF, remote: ctx.tgtB.id, remoteOffset: RT_OFF, length: RT_LEN }], XFER);
  assert.equal(w.bytes, RT_LEN);
  sameBytes(ctx.tgtB.bytes.subarray(RT_OFF), data, 'round trip WRITE landed');
  ctx.dstA.bytes.fill(0, RT_OFF);
  const r = await ctx.a.read(peer, [{ local: ctx.dstA, localOffset: RT_OFF, remote: ctx.tgtB.id, remoteOffset: RT_OFF, length: RT_LEN }], XFER);
  assert.equal(r.bytes, RT_LEN);
  sameBytes(ctx.dstA.bytes.subarray(RT_OFF), data, 'round trip READ landed');
  assert.equal(ctx.a.inFlight, 0);
}

/** Both transfer directions of one descriptor list must fail with `code`. */
async function bothOps(ctx: Ctx, descs: TransferDescriptor[], code: ErrorCode, label: string): Promise<void> {
  const peer = peerB(ctx);
  await rejects(() => ctx.a.write(peer, descs, XFER), code, `WRITE ${label}`);
  await rejects(() => ctx.a.read(peer, descs, XFER), code, `READ ${label}`);
}

for (const { name: provider, other } of PROVIDERS) {
  describe(`bad input (${provider})`, { timeout: 120_000 }, () => {
    const ctx = { provider } as Ctx;

    before(async () => {
      ctx.a = await create('a', provider);
      ctx.b = await create('b', provider);
      ctx.c = await create('c', provider);
      ctx.other = await create('other', other);
      ctx.srcA = ctx.a.registerMemory(new Uint8Array(REGION));
      ctx.dstA = ctx.a.registerMemory(new Uint8Array(REGION));
      ctx.tgtB = ctx.b.registerMemory(new Uint8Array(REGION));
      ctx.tgtB2 = ctx.b.registerMemory(new Uint8Array(REGION));
      ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      await roundTrip(ctx);
    });

    after(async () => {
      await Promise.all([ctx.a, ctx.b, ctx.c, ctx.other].filter(Boolean).map((x) => x.close()));
    });

    test('local offset or length outside the local region: KVF_ERR_OUT_OF_RANGE', { timeout: TEST_TIMEOUT }, async () => {
      const L = ctx.srcA.length;
      for (const [localOffset, length] of [
        [L, 1],
        [L - 1, 2],
        [0, L + 1],
        [L + 1, 1],
        [L * 2, 16],
      ] as const) {
        await bothOps(ctx, [desc(ctx, { localOffset, length })], 'KVF_ERR_OUT_OF_RANGE', `local [${localOffset}, +${length})`);
      }
      // The last byte is still in range.
      await ctx.a.write(peerB(ctx), [desc(ctx, { localOffset: L - 1, length: 1 })], XFER);
      await roundTrip(ctx);
    });

    test('remote offset or length outside the peer region: KVF_ERR_OUT_OF_RANGE', { timeout: TEST_TIMEOUT }, async () => {
      const L = ctx.tgtB.length;
      assert.equal(peerB(ctx).regions.find((r) => r.id === ctx.tgtB.id)?.length, L);
      for (const [remoteOffset, length] of [
        [L, 1],
        [L - 1, 2],
        [0, L + 1],
        [L + 1, 1],
      ] as const) {
        await bothOps(ctx, [desc(ctx, { remoteOffset, length })], 'KVF_ERR_OUT_OF_RANGE', `remote [${remoteOffset}, +${length})`);
      }
      await ctx.a.write(peerB(ctx), [desc(ctx, { remoteOffset: L - 1, length: 1 })], XFER);
      await roundTrip(ctx);
    });

    test('offset + length past 2^53 or 2^64: KVF_ERR_OUT_OF_RANGE, unsafe integers KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
      const MAX = Number.MAX_SAFE_INTEGER; // 2^53 - 1: exact, so the native side sees the real value
      for (const over of [
        { localOffset: MAX, length: 1 },
        { localOffset: MAX, length: MAX },
        { localOffset: 1, length: MAX },
        { localOffset: MAX - 15, length: 16 },
        { remoteOffset: MAX, length: 1 },
        { remoteOffset: MAX - 1, length: 2 },
        { remoteOffset: 16, length: MAX },
      ]) {
        await bothOps(ctx, [desc(ctx, over)], 'KVF_ERR_OUT_OF_RANGE', JSON.stringify(over));
      }
      // Not exactly representable or not finite: refused as malformed rather than rounded.
      for (const v of [2 ** 53, 2 ** 53 + 2, 2 ** 64, 2 ** 64 - 16, Number.MAX_VALUE, Infinity]) {
        for (const field of ['localOffset', 'remoteOffset', 'length'] as const) {
          await bothOps(ctx, [desc(ctx, { [field]: v })], 'KVF_ERR_INVALID_ARGUMENT', `${field} ${v}`);
        }
      }
      await roundTrip(ctx);
    });

    test('negative, fractional, NaN or non-number fields: KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
      const values: unknown[] = [-1, -0.5, 0.5, 1.5, -(2 ** 53), NaN, -Infinity, '0', '16', null, undefined, 1n, {}];
      for (const field of ['localOffset', 'remoteOffset', 'length', 'local', 'remote'] as const) {
        for (const v of values) {
          // An object is a valid region handle shape for local/remote ({ id }), so wrap the bad id instead.
          const value = (field === 'local' || field === 'remote') && typeof v === 'object' && v !== null ? { id: -1 } : v;
          await bothOps(ctx, [desc(ctx, { [field]: value })], 'KVF_ERR_INVALID_ARGUMENT', `${field} = ${String(value)}`);
        }
      }
      for (const id of [-1, 0.5, NaN]) {
        await bothOps(ctx, [desc(ctx, { remote: { id } })], 'KVF_ERR_INVALID_ARGUMENT', `remote { id: ${id} }`);
      }
      // Malformed descriptor lists and ops.
      const peer = peerB(ctx);
      for (const list of [undefined, null, {}, 'x', 42, { length: 1, 0: desc(ctx) }]) {
        await rejects(() => ctx.a.write(peer, list as never, XFER), 'KVF_ERR_INVALID_ARGUMENT', `descriptors ${JSON.stringify(list)}`);
      }
      for (const item of [null, 42, 'desc']) {
        await rejects(() => ctx.a.write(peer, [desc(ctx), item as never], XFER), 'KVF_ERR_INVALID_ARGUMENT', `descriptor ${String(item)}`);
      }
      for (const op of ['write', 'COPY', '', undefined]) {
        await rejects(() => ctx.a.transfer(op as never, peer, [desc(ctx)], XFER), 'KVF_ERR_INVALID_ARGUMENT', `op ${String(op)}`);
      }
      for (const note of [42, {}, [1, 2]]) {
        await rejects(
          () => ctx.a.write(peer, [desc(ctx)], { notification: note as never }),
          'KVF_ERR_INVALID_ARGUMENT',
          `notification ${JSON.stringify(note)}`,
        );
        await rejects(() => ctx.a.sendNotification(peer, note as never), 'KVF_ERR_INVALID_ARGUMENT', `sendNotification ${JSON.stringify(note)}`);
      }
      await roundTrip(ctx);
    });

    test('one bad descriptor fails the whole transfer before anything is posted', { timeout: TEST_TIMEOUT }, async () => {
      ctx.tgtB.bytes.fill(0xab, 0, 4 * KiB);
      ctx.srcA.bytes.set(random(4 * KiB), 0);
      const good = [0, 1, 2].map((i) => desc(ctx, { localOffset: i * KiB, remoteOffset: i * KiB, length: KiB }));
      const peer = peerB(ctx);
      const cases: [TransferDescriptor, ErrorCode][] = [
        [desc(ctx, { remoteOffset: ctx.tgtB.length, length: 1 }), 'KVF_ERR_OUT_OF_RANGE'],
        [desc(ctx, { local: 999_999 }), 'KVF_ERR_UNKNOWN_REGION'],
        [desc(ctx, { length: 0 }), 'KVF_ERR_ZERO_LENGTH'],
        [desc(ctx, { localOffset: -1 }), 'KVF_ERR_INVALID_ARGUMENT'],
      ];
      for (const [bad, code] of cases) {
        const err = await rejects(() => ctx.a.write(peer, [...good, bad], XFER), code, `WRITE with descriptor 3 ${code}`);
        assert.match(err.message, /descriptor 3\b/, 'the message names the bad descriptor');
      }
      const err = await rejects(
        () =>
          ctx.a.write(peer, [...good, desc(ctx, { localOffset: 3 * KiB, remoteOffset: 3 * KiB, length: KiB })], {
            ...XFER,
            notification: new Uint8Array(ctx.a.info.maxNotificationBytes + 1),
          }),
        'KVF_ERR_TOO_LARGE',
        'WRITE with a too-large notification',
      );
      assert.match(err.message, /16384|limit/);
      await roundTrip(ctx); // anything wrongly posted above would have landed by now
      await delay(20);
      assert.ok(
        ctx.tgtB.bytes.subarray(0, 4 * KiB).every((v) => v === 0xab),
        "B's memory was not touched by the refused transfers",
      );
    });

    test('unknown local region id: KVF_ERR_UNKNOWN_REGION', { timeout: TEST_TIMEOUT }, async () => {
      for (const local of [0, 999_999, 0xffffffff, 2 ** 32 + ctx.srcA.id, 2 ** 40 + ctx.srcA.id]) {
        await bothOps(ctx, [desc(ctx, { local })], 'KVF_ERR_UNKNOWN_REGION', `local region ${local}`);
      }
      await roundTrip(ctx);
    });

    test('a MemoryRegion of another agent is not a local region: KVF_ERR_UNKNOWN_REGION', { timeout: TEST_TIMEOUT }, async () => {
      // C's first region has the same id as A's srcA; using C's handle must not silently move A's bytes.
      const foreign = ctx.c.registerMemory(new Uint8Array(REGION));
      try {
        await bothOps(ctx, [desc(ctx, { local: foreign })], 'KVF_ERR_UNKNOWN_REGION', "C's region as A's local");
        // B's region handle as A's local region: same problem (B's ids also start at 1).
        await bothOps(ctx, [desc(ctx, { local: ctx.tgtB })], 'KVF_ERR_UNKNOWN_REGION', "B's region as A's local");
      } finally {
        foreign.deregister();
      }
      await roundTrip(ctx);
    });

    test('unknown remote region id: KVF_ERR_UNKNOWN_REGION', { timeout: TEST_TIMEOUT }, async () => {
      for (const remote of [0, 999_999, 0xffffffff, 2 ** 32 + ctx.tgtB.id, { id: 2 ** 32 + ctx.tgtB.id }]) {
        await bothOps(ctx, [desc(ctx, { remote })], 'KVF_ERR_UNKNOWN_REGION', `remote region ${JSON.stringify(remote)}`);
      }
      // A region B keeps private (remoteAccess: false) is not advertised.
      const priv = ctx.b.registerMemory(new Uint8Array(4 * KiB), { remoteAccess: false });
      // A region B registered after A loaded its metadata is unknown to A until A reloads.
      const late = ctx.b.registerMemory(new Uint8Array(4 * KiB));
      try {
        await bothOps(ctx, [desc(ctx, { remote: priv.id })], 'KVF_ERR_UNKNOWN_REGION', 'private remote region');
        await bothOps(ctx, [desc(ctx, { remote: late.id })], 'KVF_ERR_UNKNOWN_REGION', 'remote region registered after the metadata was loaded');
        const peer = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
        assert.ok(peer.regions.some((r) => r.id === late.id));
        assert.ok(!peer.regions.some((r) => r.id === priv.id), 'a remoteAccess: false region is not advertised');
        await bothOps(ctx, [desc(ctx, { remote: priv.id })], 'KVF_ERR_UNKNOWN_REGION', 'private remote region after reload');
        await ctx.a.write(peer, [desc(ctx, { remote: late })], XFER);
      } finally {
        priv.deregister();
        late.deregister();
        ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      }
      await roundTrip(ctx);
    });

    test('deregistered local region: KVF_ERR_UNKNOWN_REGION; deregister is idempotent', { timeout: TEST_TIMEOUT }, async () => {
      const r = ctx.a.registerMemory(new Uint8Array(REGION));
      const al = ctx.a.allocate(REGION);
      await ctx.a.write(peerB(ctx), [desc(ctx, { local: r })], XFER);
      await ctx.a.write(peerB(ctx), [desc(ctx, { local: al })], XFER);
      for (const region of [r, al]) {
        assert.equal(region.registered, true);
        region.deregister();
        assert.equal(region.registered, false);
        region.deregister(); // no-op
        await bothOps(ctx, [desc(ctx, { local: region })], 'KVF_ERR_UNKNOWN_REGION', `deregistered region ${region.id} (handle)`);
        await bothOps(ctx, [desc(ctx, { local: region.id })], 'KVF_ERR_UNKNOWN_REGION', `deregistered region ${region.id} (id)`);
      }
      // A later registration gets a new id, never the deregistered one.
      const again = ctx.a.registerMemory(new Uint8Array(KiB));
      assert.notEqual(again.id, r.id);
      assert.notEqual(again.id, al.id);
      again.deregister();
      // A's metadata no longer lists them.
      const listed = decodeMetadata(ctx.a.getLocalMetadata()).regions.map((x) => x.id);
      assert.ok(!listed.includes(r.id) && !listed.includes(al.id));
      await roundTrip(ctx);
    });

    test('unknown peer, by name or a RemotePeer of another agent: KVF_ERR_UNKNOWN_PEER', { timeout: TEST_TIMEOUT }, async () => {
      const cPeer = ctx.c.loadRemoteMetadata(ctx.b.getLocalMetadata()); // C's handle on B: valid, but not A's
      const forged = { name: 'b', id: peerB(ctx).id, valid: true, regions: peerB(ctx).regions };
      for (const [label, peer] of [
        ['name nobody', 'nobody'],
        ['name ""', ''],
        ["C's RemotePeer for b", cPeer],
        ['a look-alike object', forged],
      ] as const) {
        const p = peer as RemotePeer | string;
        await rejects(() => ctx.a.write(p, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', `WRITE ${label}`);
        await rejects(() => ctx.a.read(p, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', `READ ${label}`);
        await rejects(() => ctx.a.sendNotification(p, 'hi'), 'KVF_ERR_UNKNOWN_PEER', `sendNotification ${label}`);
        throws(() => ctx.a.invalidateRemoteMetadata(p), 'KVF_ERR_UNKNOWN_PEER', `invalidateRemoteMetadata ${label}`);
      }
      // An unknown peer is reported before the descriptors are looked at.
      await rejects(() => ctx.a.write('nobody', [], XFER), 'KVF_ERR_UNKNOWN_PEER', 'unknown peer with no descriptors');
      assert.equal(cPeer.valid, true, "A's refusals leave C's handle alone");
      await ctx.c.sendNotification(cPeer, 'still fine');
      ctx.c.invalidateRemoteMetadata(cPeer);
      await roundTrip(ctx);
    });

    test('invalidated peer: KVF_ERR_UNKNOWN_PEER until reloaded; old handles stay dead', { timeout: TEST_TIMEOUT }, async () => {
      const p1 = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      ctx.a.invalidateRemoteMetadata(p1);
      assert.equal(p1.valid, false);
      assert.equal(ctx.a.peer('b'), undefined);
      for (const [label, p] of [
        ['handle', p1],
        ['name', 'b'],
      ] as const) {
        await rejects(() => ctx.a.write(p, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', `WRITE to invalidated peer (${label})`);
        await rejects(() => ctx.a.read(p, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', `READ from invalidated peer (${label})`);
        await rejects(() => ctx.a.sendNotification(p, 'x'), 'KVF_ERR_UNKNOWN_PEER', `notify invalidated peer (${label})`);
        throws(() => ctx.a.invalidateRemoteMetadata(p), 'KVF_ERR_UNKNOWN_PEER', `invalidate twice (${label})`);
      }
      const p2 = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      assert.equal(ctx.a.peer('b'), p2);
      await rejects(() => ctx.a.write(p1, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', 'stale handle after reload');
      // Loading again replaces (and invalidates) the previous handle.
      const p3 = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      assert.equal(p2.valid, false);
      assert.equal(p3.valid, true);
      await rejects(() => ctx.a.write(p2, [desc(ctx)], XFER), 'KVF_ERR_UNKNOWN_PEER', 'replaced handle');
      await ctx.a.write(p3, [desc(ctx)], XFER);
      await ctx.a.write('b', [desc(ctx)], XFER);
      await roundTrip(ctx);
    });

    test('every method after close: KVF_ERR_CLOSED; close is idempotent and returns the same promise', { timeout: TEST_TIMEOUT }, async () => {
      const x = await create('x', provider);
      const region = x.registerMemory(new Uint8Array(4 * KiB));
      const allocated = x.allocate(4 * KiB);
      const peer = x.loadRemoteMetadata(ctx.b.getLocalMetadata());
      await x.write(peer, [{ local: region, localOffset: 0, remote: ctx.tgtB.id, remoteOffset: 0, length: 16 }], XFER);
      const early = x.notifications();
      const pendingNext = early.next();
      let finished = false;
      const closing = x.close();
      closing.then(() => (finished = true));
      assert.equal(x.close(), closing, 'a second close() returns the same promise');
      assert.equal(x.closed, true, 'closed is true as soon as close() is called');

      const d = { local: region, localOffset: 0, remote: ctx.tgtB.id, remoteOffset: 0, length: 16 };
      const everyMethod = async (when: string) => {
        throws(() => x.registerMemory(new Uint8Array(16)), 'KVF_ERR_CLOSED', `registerMemory ${when}`);
        throws(() => x.allocate(16), 'KVF_ERR_CLOSED', `allocate ${when}`);
        throws(() => x.getLocalMetadata(), 'KVF_ERR_CLOSED', `getLocalMetadata ${when}`);
        throws(() => x.loadRemoteMetadata(ctx.b.getLocalMetadata()), 'KVF_ERR_CLOSED', `loadRemoteMetadata ${when}`);
        throws(() => x.invalidateRemoteMetadata(peer), 'KVF_ERR_CLOSED', `invalidateRemoteMetadata(handle) ${when}`);
        throws(() => x.invalidateRemoteMetadata('b'), 'KVF_ERR_CLOSED', `invalidateRemoteMetadata(name) ${when}`);
        await rejects(() => x.write(peer, [d], XFER), 'KVF_ERR_CLOSED', `write ${when}`);
        await rejects(() => x.read(peer, [d], XFER), 'KVF_ERR_CLOSED', `read ${when}`);
        await rejects(() => x.transfer('WRITE', 'b', [d], XFER), 'KVF_ERR_CLOSED', `transfer ${when}`);
        await rejects(() => x.write('b', [], XFER), 'KVF_ERR_CLOSED', `write with no descriptors ${when}`);
        await rejects(() => x.sendNotification(peer, 'x'), 'KVF_ERR_CLOSED', `sendNotification ${when}`);
        await rejects(() => x.write(peer, [d], { notification: 'x' }), 'KVF_ERR_CLOSED', `write with notification ${when}`);
      };
      await everyMethod('while closing');
      await closing;
      assert.equal(finished, true);
      await everyMethod('after close');
      assert.equal(x.close(), closing, 'close() after close resolves to the same promise');
      await x.close();
      assert.equal(x.inFlight, 0);
      assert.equal(region.registered, false);
      assert.equal(allocated.registered, false);
      region.deregister(); // released with the agent: a no-op, not an error
      allocated.deregister();
      assert.equal(peer.valid, false);
      assert.equal(x.peer('b'), undefined);
      assert.deepEqual(await pendingNext, { value: undefined, done: true }, 'an iterator waiting at close ends');
      assert.deepEqual(await x.notifications().next(), { value: undefined, done: true }, 'a new iterator after close is done');
      await roundTrip(ctx);
    });

    test('corrupt, truncated, random or wrong-version metadata: KVF_ERR_BAD_METADATA', { timeout: TEST_TIMEOUT }, async () => {
      const before = peerB(ctx);
      const blob = ctx.b.getLocalMetadata();
      const bad: [string, unknown][] = [];
      // Bit flips: caught by the CRC wherever they land.
      for (const at of [0, 4, 8, 12, 13, Math.floor(blob.length / 2), blob.length - 5, blob.length - 1]) {
        const b = Buffer.from(blob);
        b[at] = b[at]! ^ 0x10;
        bad.push([`bit flip at ${at}`, b]);
      }
      for (const n of [0, 1, 4, 11, 12, 20, blob.length - 4, blob.length - 1]) bad.push([`truncated to ${n}`, blob.subarray(0, n)]);
      bad.push(['one byte appended', Buffer.concat([blob, Buffer.from([0])])]);
      bad.push(['blob twice', Buffer.concat([blob, blob])]);
      // Well-checksummed but wrong: version, flags, total length.
      for (const version of [0, 1, 2, 3, 4, METADATA_VERSION + 1, 0xffff]) {
        const b = Buffer.from(blob);
        b.writeUInt16LE(version, 4);
        bad.push([`version ${version}`, withCrc(b)]);
      }
      {
        const b = Buffer.from(blob);
        b.writeUInt16LE(b.readUInt16LE(6) | 0x8000, 6);
        bad.push(['unknown flag bit', withCrc(b)]);
        const c = Buffer.from(blob);
        c.writeUInt32LE(blob.length + 8, 8);
        bad.push(['total length lies', withCrc(c)]);
      }
      const rng = prng(0x6b7666 + (provider === 'shm' ? 1 : 0));
      for (let i = 0; i < 40; i++) {
        const n = Math.floor(rng() * 200);
        const b = Buffer.alloc(n);
        for (let k = 0; k < n; k++) b[k] = Math.floor(rng() * 256);
        if (i % 2 === 1 && n >= 4) b.write('KVFM', 0, 'latin1'); // get past the magic
        bad.push([`random ${n} bytes #${i}`, b]);
      }
      for (const v of [undefined, null, 'KVFM', 42, {}, [1, 2, 3], blob.buffer.slice(blob.byteOffset, blob.byteOffset + blob.length)]) {
        bad.push([`not a Uint8Array: ${Object.prototype.toString.call(v)}`, v]);
      }
      for (const [label, input] of bad) {
        throws(() => ctx.a.loadRemoteMetadata(input as Uint8Array), 'KVF_ERR_BAD_METADATA', label);
      }
      const version = Buffer.from(blob);
      version.writeUInt16LE(METADATA_VERSION + 1, 4);
      const err = throws(() => ctx.a.loadRemoteMetadata(withCrc(version)), 'KVF_ERR_BAD_METADATA', 'a future version');
      assert.match(err.message, new RegExp(`version ${METADATA_VERSION + 1}`));
      // None of that disturbed the loaded peer.
      assert.equal(ctx.a.peer('b'), before);
      assert.equal(before.valid, true);
      await roundTrip(ctx);
    });

    test('metadata of another provider: KVF_ERR_PROVIDER_MISMATCH', { timeout: TEST_TIMEOUT }, async () => {
      const before = peerB(ctx);
      const foreign = ctx.other.getLocalMetadata();
      assert.notEqual(decodeMetadata(foreign).provider, ctx.a.provider);
      const err = throws(() => ctx.a.loadRemoteMetadata(foreign), 'KVF_ERR_PROVIDER_MISMATCH', `${other} metadata into a ${provider} agent`);
      assert.equal(err.peer, 'other');
      throws(() => ctx.other.loadRemoteMetadata(ctx.b.getLocalMetadata()), 'KVF_ERR_PROVIDER_MISMATCH', `${provider} metadata into a ${other} agent`);
      // B's own description with only the provider or the address mode changed.
      const desc0 = decodeMetadata(ctx.b.getLocalMetadata());
      for (const [label, changed] of [
        ['provider name efa', { ...desc0, name: 'b-efa', provider: 'efa' }],
        ['virtAddr flipped', { ...desc0, name: 'b-virt', virtAddr: !desc0.virtAddr }],
      ] as const) {
        throws(() => ctx.a.loadRemoteMetadata(encodeMetadata(changed)), 'KVF_ERR_PROVIDER_MISMATCH', label);
      }
      if (provider === 'tcp') {
        // Same provider name, but endpoint addresses of another size than tcp's fixed-size sockaddr.
        // (shm addresses are strings whose length legitimately varies.)
        const longer = { ...desc0, name: 'b-addr', rails: desc0.rails.map((r) => Uint8Array.from([...r, 0, 0, 0, 0])) };
        throws(() => ctx.a.loadRemoteMetadata(encodeMetadata(longer)), 'KVF_ERR_PROVIDER_MISMATCH', 'endpoint address of another size');
        assert.equal(ctx.a.peer('b-addr'), undefined);
      } else {
        // A shm address must be one NUL-terminated string.
        for (const [label, rail] of [
          ['no terminating NUL', (r: Uint8Array) => r.subarray(0, r.length - 1)],
          ['NUL inside', (r: Uint8Array) => Uint8Array.from([...r.subarray(0, 5), 0, ...r.subarray(5)])],
        ] as const) {
          const bad = { ...desc0, name: 'b-str', rails: desc0.rails.map(rail) };
          throws(() => ctx.a.loadRemoteMetadata(encodeMetadata(bad)), 'KVF_ERR_BAD_METADATA', `shm address with ${label}`);
        }
        assert.equal(ctx.a.peer('b-str'), undefined);
      }
      assert.equal(ctx.a.peer('b'), before);
      assert.equal(before.valid, true);
      await roundTrip(ctx);
    });

    test('a refused metadata blob leaves the loaded peer of that name in place', { timeout: TEST_TIMEOUT }, async () => {
      const before = peerB(ctx);
      const d = decodeMetadata(ctx.b.getLocalMetadata());
      // Named 'b', decodes fine, but the addresses cannot be used by this provider (tcp: not the size of a
      // sockaddr; shm: not a NUL-terminated string): the load must fail without first dropping the
      // working peer 'b'.
      const broken = encodeMetadata({ ...d, rails: d.rails.map((r) => Uint8Array.from([...r, 1, 2, 3])) });
      const code = provider === 'tcp' ? 'KVF_ERR_PROVIDER_MISMATCH' : 'KVF_ERR_BAD_METADATA';
      throws(() => ctx.a.loadRemoteMetadata(broken), code, 'unusable address for the loaded peer b');
      assert.equal(ctx.a.peer('b'), before, 'peer b is still loaded');
      assert.equal(before.valid, true, 'the old handle is still valid');
      await ctx.a.write(before, [desc(ctx)], XFER);
      await roundTrip(ctx);
    });

    test('registering a detached ArrayBuffer: KVF_ERR_DETACHED', { timeout: TEST_TIMEOUT }, async () => {
      const detach = (ab: ArrayBuffer) => {
        structuredClone(ab, { transfer: [ab] });
        assert.equal(ab.byteLength, 0);
        return ab;
      };
      // Views made before the buffer went away.
      const ab1 = new ArrayBuffer(4 * KiB);
      const u8 = new Uint8Array(ab1, 16, 64);
      detach(ab1);
      throws(() => ctx.a.registerMemory(u8), 'KVF_ERR_DETACHED', 'Uint8Array over a detached buffer');
      const ab2 = new ArrayBuffer(4 * KiB);
      const f64 = new Float64Array(ab2);
      const dv = new DataView(ab2);
      detach(ab2);
      throws(() => ctx.a.registerMemory(f64), 'KVF_ERR_DETACHED', 'Float64Array over a detached buffer');
      throws(() => ctx.a.registerMemory(dv), 'KVF_ERR_DETACHED', 'DataView over a detached buffer');
      // The ArrayBuffer itself.
      throws(() => ctx.a.registerMemory(detach(new ArrayBuffer(4 * KiB))), 'KVF_ERR_DETACHED', 'detached ArrayBuffer');
      await roundTrip(ctx);
    });

    test('a registered ArrayBuffer detached later: transfers using it fail with KVF_ERR_DETACHED', { timeout: TEST_TIMEOUT }, async () => {
      const ab = new ArrayBuffer(REGION);
      const r = ctx.a.registerMemory(ab);
      await ctx.a.write(peerB(ctx), [desc(ctx, { local: r })], XFER);
      const moved = structuredClone(ab, { transfer: [ab] });
      assert.equal(ab.byteLength, 0);
      await rejects(() => ctx.a.write(peerB(ctx), [desc(ctx, { local: r })], XFER), 'KVF_ERR_DETACHED', 'WRITE from a detached region');
      await rejects(() => ctx.a.read(peerB(ctx), [desc(ctx, { local: r })], XFER), 'KVF_ERR_DETACHED', 'READ into a detached region');
      // Also when the detached region is only the second descriptor's.
      await rejects(
        () => ctx.a.write(peerB(ctx), [desc(ctx), desc(ctx, { local: r, remoteOffset: 1024 })], XFER),
        'KVF_ERR_DETACHED',
        'WRITE with a detached region in descriptor 1',
      );
      assert.equal(moved.byteLength, REGION);
      r.deregister(); // still possible
      assert.equal(r.registered, false);
      await roundTrip(ctx);
    });

    test('zero-length descriptor or registration: KVF_ERR_ZERO_LENGTH', { timeout: TEST_TIMEOUT }, async () => {
      await bothOps(ctx, [desc(ctx, { length: 0 })], 'KVF_ERR_ZERO_LENGTH', 'descriptor of length 0');
      await bothOps(ctx, [desc(ctx), desc(ctx, { length: 0, localOffset: 100, remoteOffset: 100 })], 'KVF_ERR_ZERO_LENGTH', 'second descriptor of length 0');
      await bothOps(ctx, [desc(ctx, { length: 0, localOffset: ctx.srcA.length })], 'KVF_ERR_ZERO_LENGTH', 'length 0 at the end of the region');
      for (const [label, mem] of [
        ['Uint8Array(0)', new Uint8Array(0)],
        ['ArrayBuffer(0)', new ArrayBuffer(0)],
        ['Buffer.alloc(0)', Buffer.alloc(0)],
        ['empty subarray', new Uint8Array(64).subarray(10, 10)],
        ['Float32Array(0)', new Float32Array(0)],
        ['DataView of 0 bytes', new DataView(new ArrayBuffer(8), 8)],
        ['SharedArrayBuffer(0)', new SharedArrayBuffer(0)],
      ] as const) {
        throws(() => ctx.a.registerMemory(mem), 'KVF_ERR_ZERO_LENGTH', `register ${label}`);
      }
      throws(() => ctx.a.allocate(0), 'KVF_ERR_ZERO_LENGTH', 'allocate(0)');
      for (const n of [-1, 1.5, NaN, Infinity, '16', 2 ** 53]) {
        throws(() => ctx.a.allocate(n as number), 'KVF_ERR_INVALID_ARGUMENT', `allocate(${String(n)})`);
      }
      for (const m of [null, undefined, 'bytes', 42, [1, 2, 3], {}]) {
        throws(() => ctx.a.registerMemory(m as never), 'KVF_ERR_INVALID_ARGUMENT', `registerMemory(${JSON.stringify(m)})`);
      }
      await roundTrip(ctx);
    });

    test('overlapping destinations: KVF_ERR_OVERLAP; overlapping sources are fine', { timeout: TEST_TIMEOUT }, async () => {
      const peer = peerB(ctx);
      const d = (localOffset: number, remoteOffset: number, length: number, remote = ctx.tgtB.id) =>
        desc(ctx, { localOffset, remoteOffset, length, remote, local: ctx.srcA });
      const r = (localOffset: number, remoteOffset: number, length: number) => desc(ctx, { localOffset, remoteOffset, length, local: ctx.dstA });
      // WRITE: remote ranges overlap.
      for (const [label, list] of [
        ['partial', [d(0, 0, 100), d(200, 50, 100)]],
        ['identical', [d(0, 0, 64), d(100, 0, 64)]],
        ['contained', [d(0, 0, 1000), d(2000, 10, 10)]],
        ['by one byte', [d(0, 0, 100), d(200, 99, 100)]],
        ['unsorted, third descriptor', [d(0, 3000, 100), d(200, 0, 100), d(400, 3050, 10)]],
      ] as const) {
        await rejects(() => ctx.a.write(peer, [...list], XFER), 'KVF_ERR_OVERLAP', `WRITE remote overlap ${label}`);
      }
      // READ: local ranges overlap.
      for (const [label, list] of [
        ['partial', [r(0, 0, 100), r(50, 200, 100)]],
        ['identical', [r(0, 0, 64), r(0, 100, 64)]],
        ['by one byte', [r(0, 0, 100), r(99, 200, 100)]],
      ] as const) {
        await rejects(() => ctx.a.read(peer, [...list], XFER), 'KVF_ERR_OVERLAP', `READ local overlap ${label}`);
      }

      // WRITE with overlapping sources: one source range copied to two places.
      const src = random(256);
      ctx.srcA.bytes.set(src, 0);
      await ctx.a.write(peer, [d(0, 0, 256), d(0, 1024, 256), d(128, 2048, 128)], XFER);
      sameBytes(ctx.tgtB.bytes.subarray(0, 256), src, 'overlapping sources, first copy');
      sameBytes(ctx.tgtB.bytes.subarray(1024, 1280), src, 'overlapping sources, second copy');
      sameBytes(ctx.tgtB.bytes.subarray(2048, 2176), src.subarray(128), 'overlapping sources, partial copy');
      // READ with overlapping remote sources.
      ctx.dstA.bytes.fill(0, 0, 4096);
      await ctx.a.read(peer, [r(0, 0, 256), r(1024, 0, 256), r(2048, 128, 128)], XFER);
      sameBytes(ctx.dstA.bytes.subarray(0, 256), src, 'overlapping remote sources, first');
      sameBytes(ctx.dstA.bytes.subarray(1024, 1280), src, 'overlapping remote sources, second');
      sameBytes(ctx.dstA.bytes.subarray(2048, 2176), src.subarray(128), 'overlapping remote sources, partial');
      // Adjacent destinations, and equal offsets in different regions, do not overlap.
      await ctx.a.write(peer, [d(0, 0, 100), d(100, 100, 100), d(0, 0, 100, ctx.tgtB2.id)], XFER);
      await ctx.a.read(peer, [r(0, 0, 100), r(100, 100, 100)], XFER);
      await roundTrip(ctx);
    });

    test('empty descriptor list: KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
      const peer = peerB(ctx);
      await rejects(() => ctx.a.write(peer, [], XFER), 'KVF_ERR_INVALID_ARGUMENT', 'WRITE []');
      await rejects(() => ctx.a.read(peer, [], XFER), 'KVF_ERR_INVALID_ARGUMENT', 'READ []');
      await rejects(() => ctx.a.transfer('WRITE', 'b', []), 'KVF_ERR_INVALID_ARGUMENT', 'transfer WRITE []');
      await rejects(() => ctx.a.write(peer, [], { notification: 'done' }), 'KVF_ERR_INVALID_ARGUMENT', 'WRITE [] with a notification');
      await roundTrip(ctx);
    });

    test('notification above maxNotificationBytes: KVF_ERR_TOO_LARGE; exactly the limit is delivered', { timeout: TEST_TIMEOUT }, async () => {
      const max = ctx.a.info.maxNotificationBytes;
      assert.ok(Number.isSafeInteger(max) && max > 0);
      const peer = peerB(ctx);
      const tooBig = [
        ['Uint8Array max+1', new Uint8Array(max + 1)],
        ['Uint8Array 1 MiB', new Uint8Array(MiB)],
        // Counted in UTF-8 bytes, not characters: max/2 + 1 two-byte characters.
        ['string of two-byte characters', 'é'.repeat(max / 2 + 1)],
      ] as const;
      for (const [label, note] of tooBig) {
        await rejects(() => ctx.a.sendNotification(peer, note), 'KVF_ERR_TOO_LARGE', `sendNotification ${label}`);
        await rejects(() => ctx.a.write(peer, [desc(ctx)], { ...XFER, notification: note }), 'KVF_ERR_TOO_LARGE', `WRITE + notification ${label}`);
        await rejects(
          () => ctx.a.read(peer, [desc(ctx, { local: ctx.dstA })], { ...XFER, notification: note }),
          'KVF_ERR_TOO_LARGE',
          `READ + notification ${label}`,
        );
      }
      // Exactly the limit goes through, and arrives intact.
      const exact = random(max);
      const got = new Promise<Buffer>((resolve) => {
        const on = (n: { from: string; data: Buffer }) => {
          if (n.from === 'a' && n.data.length === max) {
            ctx.b.off('notification', on);
            resolve(n.data);
          }
        };
        ctx.b.on('notification', on);
      });
      await ctx.a.sendNotification(peer, exact);
      const arrived = await Promise.race([got, delay(10_000).then(() => assert.fail('notification of exactly the limit did not arrive'))]);
      sameBytes(arrived, exact, 'notification of exactly maxNotificationBytes');
      await roundTrip(ctx);
    });

    test('a transfer refused at posting leaves its regions free: they deregister at once', { timeout: TEST_TIMEOUT }, async () => {
      const mine = ctx.a.allocate(64 * KiB);
      const pool = ctx.b.allocate(64 * KiB, { remoteAccess: false });
      const grant = ctx.b.grant(pool, { offset: 0, length: 64 * KiB, access: 'read' });
      const peer = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      const id = peer.addGrant(grant.bytes);
      const one = { local: mine, localOffset: 0, remote: id, remoteOffset: 0, length: 4 * KiB };
      try {
        await rejects(() => ctx.a.write(peer, [one], XFER), 'KVF_ERR_REMOTE_ACCESS', 'WRITE through a read grant');
        const note = new Uint8Array(ctx.a.info.maxNotificationBytes + 1);
        await rejects(() => ctx.a.read(peer, [one], { ...XFER, notification: note }), 'KVF_ERR_TOO_LARGE', 'READ with too large a notification');
        mine.deregister(); // KVF_ERR_BUSY here if a refused transfer had counted itself in flight
        assert.equal(mine.registered, false);
      } finally {
        peer.removeGrant(id);
        grant.revoke();
        pool.deregister();
        if (mine.registered) mine.deregister();
      }
      ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      await roundTrip(ctx);
    });

    test("a READ that times out is abandoned, not undone: its error's `settled` says when its memory is free again", { timeout: TEST_TIMEOUT }, async () => {
      // 64 MiB cannot arrive within 1 ms: the promise rejects while the READ is still writing into `big`.
      const big = ctx.a.allocate(64 * MiB);
      const bigB = ctx.b.allocate(64 * MiB);
      const peer = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      try {
        const err = await ctx.a.read(peer, [{ local: big, localOffset: 0, remote: bigB.id, remoteOffset: 0, length: 64 * MiB }], { timeoutMs: 1 }).then(
          () => assert.fail('64 MiB within 1 ms'),
          (e: KvfError) => e,
        );
        assert.equal(err.code, 'KVF_ERR_TIMEOUT');
        assert.ok(err.settled instanceof Promise, 'a timed-out transfer says when it has ended');
        // (Whether it is still in flight right now depends on how late the timer fired: under ASan the READ may
        // already be done, so the region's state is not asserted here; `settled` must come either way.)
        await Promise.race([err.settled, delay(30_000).then(() => assert.fail('the abandoned READ never ended'))]);
        big.deregister(); // nothing in flight any more
      } finally {
        if (big.registered) big.deregister();
        bigB.deregister();
      }
      await roundTrip(ctx);
    });

    test('deregistering a region with a transfer in flight: KVF_ERR_BUSY', { timeout: TEST_TIMEOUT }, async () => {
      // 64 MiB in one descriptor: the deregister call below runs microseconds after the post, long before
      // the copy can finish.
      const big = ctx.a.allocate(64 * MiB);
      const bigB = ctx.b.allocate(64 * MiB);
      const peer = ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      const one = { local: big, localOffset: 0, remote: bigB.id, remoteOffset: 0, length: 64 * MiB };
      try {
        const w = ctx.a.write(peer, [one], XFER);
        throws(() => big.deregister(), 'KVF_ERR_BUSY', 'deregister the source of a WRITE in flight');
        assert.equal(big.registered, true);
        await w;
        const r = ctx.a.read(peer, [one], XFER);
        throws(() => big.deregister(), 'KVF_ERR_BUSY', 'deregister the destination of a READ in flight');
        await r;
        // Two transfers on one region: busy until both are done.
        const w1 = ctx.a.write(peer, [{ ...one, length: 32 * MiB }], XFER);
        const w2 = ctx.a.write(peer, [{ ...one, localOffset: 32 * MiB, remoteOffset: 32 * MiB, length: 32 * MiB }], XFER);
        throws(() => big.deregister(), 'KVF_ERR_BUSY', 'deregister with two transfers in flight');
        await w1;
        await w2;
      } finally {
        big.deregister(); // nothing in flight any more
        assert.equal(big.registered, false);
      }
      await rejects(() => ctx.a.write(peer, [one], XFER), 'KVF_ERR_UNKNOWN_REGION', 'the region is gone after a late deregister');
      bigB.deregister();
      ctx.a.loadRemoteMetadata(ctx.b.getLocalMetadata());
      await roundTrip(ctx);
    });

    test('a region the peer deregistered (stale metadata) fails the transfer and leaves the connection usable', { timeout: TEST_TIMEOUT }, async () => {
      // Own agents: if this breaks the connection it must not break the shared ones.
      const x = await create('x-stale', provider, { closeTimeoutMs: 500 });
      const y = await create('y-stale', provider, { closeTimeoutMs: 500 });
      try {
        const src = x.registerMemory(random(4 * KiB));
        const keep = y.registerMemory(new Uint8Array(4 * KiB));
        const gone = y.registerMemory(new Uint8Array(4 * KiB));
        const peer = x.loadRemoteMetadata(y.getLocalMetadata());
        const d = (remote: number) => [{ local: src, localOffset: 0, remote, remoteOffset: 0, length: 4 * KiB }];
        await x.write(peer, d(keep.id), { timeoutMs: 2_000 });
        gone.deregister();
        await assert.rejects(x.write(peer, d(gone.id), { timeoutMs: 2_000 }), (err: unknown) => {
          assert.ok(err instanceof KvfError, show(err));
          assert.notEqual(err.code, 'KVF_ERR_TIMEOUT', 'the provider reports the bad key instead of never completing');
          return true;
        });
        keep.bytes.fill(0);
        await x.write(peer, d(keep.id), { timeoutMs: 2_000 });
        sameBytes(keep.bytes, src.bytes, 'a WRITE to a live region after the failed one');
      } finally {
        await Promise.all([x.close(), y.close()]);
      }
      await roundTrip(ctx);
    });
  });
}

// Created before every other agent of this process, so its shm endpoint name has a one-digit agent number.
let early: Agent | undefined;
before(async () => {
  early = await create('early', 'shm');
});
after(async () => {
  await early?.close();
});

test('shm addresses of different lengths are not a provider mismatch', { timeout: TEST_TIMEOUT }, async () => {
  // shm endpoint names are strings (fi_shm://kvf_<pid>_<agent number>_<rail>...): agent 3 and agent 12 of a
  // process, or processes whose pids have different numbers of digits, have addresses of different lengths.
  const late: Agent[] = [];
  try {
    while (late.length < 12) late.push(await create(`late${late.length}`, 'shm'));
    const e = early!;
    const l = late[late.length - 1]!;
    assert.notEqual(l.info.addresses[0]!.length, e.info.addresses[0]!.length, 'test setup: addresses of different lengths');
    const er = e.registerMemory(random(4 * KiB));
    const lr = l.registerMemory(new Uint8Array(4 * KiB));
    const toLate = e.loadRemoteMetadata(l.getLocalMetadata());
    await e.write(toLate, [{ local: er, localOffset: 0, remote: lr.id, remoteOffset: 0, length: 4 * KiB }], XFER);
    sameBytes(lr.bytes, er.bytes, 'early -> late');
    const toEarly = l.loadRemoteMetadata(e.getLocalMetadata());
    lr.bytes.fill(0);
    await l.read(toEarly, [{ local: lr, localOffset: 0, remote: er.id, remoteOffset: 0, length: 4 * KiB }], XFER);
    sameBytes(lr.bytes, er.bytes, 'late <- early');
  } finally {
    await Promise.all(late.map((a) => a.close()));
  }
});

describe('Agent.create with bad options', { timeout: 60_000 }, () => {
  test('backend UCX (option or NIXL_BACKEND): KVF_ERR_BACKEND_UNSUPPORTED naming LIBFABRIC', { timeout: TEST_TIMEOUT }, async () => {
    for (const backend of ['UCX', 'ucx', 'GDS', ' UCX ']) {
      const err = await rejects(
        () => Agent.create({ name: 'u', provider: 'tcp', backend, logger: false }),
        'KVF_ERR_BACKEND_UNSUPPORTED',
        `backend ${backend}`,
      );
      assert.match(err.message, /LIBFABRIC/);
      assert.match(err.message, new RegExp(backend.trim()));
    }
    const saved = process.env.NIXL_BACKEND;
    try {
      process.env.NIXL_BACKEND = 'UCX';
      const err = await rejects(() => Agent.create({ name: 'u', provider: 'tcp', logger: false }), 'KVF_ERR_BACKEND_UNSUPPORTED', 'NIXL_BACKEND=UCX');
      assert.match(err.message, /LIBFABRIC/);
      assert.match(err.message, /NIXL_BACKEND/);
      // The option wins over the environment.
      const ok = await Agent.create({ name: 'u', provider: 'tcp', backend: 'LIBFABRIC', logger: false });
      assert.equal(ok.backend, 'LIBFABRIC');
      await ok.close();
      process.env.NIXL_BACKEND = 'libfabric';
      const ok2 = await Agent.create({ name: 'u2', provider: 'shm', logger: false });
      assert.equal(ok2.backend, 'LIBFABRIC');
      await ok2.close();
    } finally {
      if (saved === undefined) delete process.env.NIXL_BACKEND;
      else process.env.NIXL_BACKEND = saved;
    }
  });

  test('unknown provider: KVF_ERR_PROVIDER_UNAVAILABLE', { timeout: TEST_TIMEOUT }, async () => {
    for (const provider of ['nosuchprovider', 'tcp;nosuch_util', 'efa-but-not-really']) {
      const err = await rejects(() => Agent.create({ name: 'p', provider, logger: false }), 'KVF_ERR_PROVIDER_UNAVAILABLE', `provider ${provider}`);
      assert.match(err.message, new RegExp(provider.replace(/[;]/g, '.')));
    }
  });

  test('rails out of 1..64, missing or bad name: KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
    const cases: [string, unknown][] = [
      ['rails 0', { name: 'r', provider: 'tcp', rails: 0 }],
      ['rails 65', { name: 'r', provider: 'tcp', rails: 65 }],
      ['rails -1', { name: 'r', provider: 'tcp', rails: -1 }],
      ['rails 1.5', { name: 'r', provider: 'tcp', rails: 1.5 }],
      ['rails NaN', { name: 'r', provider: 'tcp', rails: NaN }],
      ['rails "2"', { name: 'r', provider: 'tcp', rails: '2' }],
      ['rails 2^32 + 1', { name: 'r', provider: 'tcp', rails: 2 ** 32 + 1 }],
      ['no name', { provider: 'tcp' }],
      ['empty name', { name: '', provider: 'tcp' }],
      ['numeric name', { name: 42, provider: 'tcp' }],
      ['name of 256 bytes', { name: 'n'.repeat(256), provider: 'tcp' }],
      ['name of 256 UTF-8 bytes in 128 characters', { name: 'é'.repeat(128), provider: 'shm' }],
      ['options undefined', undefined],
      ['options null', null],
      ['options a string', 'agent'],
    ];
    for (const [label, options] of cases) {
      const o = options && typeof options === 'object' ? { logger: false, ...options } : options;
      await rejects(() => Agent.create(o as AgentOptions), 'KVF_ERR_INVALID_ARGUMENT', label);
    }
    // The edges are accepted.
    const ok = await Agent.create({ name: 'n'.repeat(255), provider: 'tcp', rails: 1, logger: false });
    await ok.close();
  });

  /** Each case must reject with INVALID_ARGUMENT; an agent created by mistake is closed. */
  async function refused(cases: [string, Record<string, unknown>][]): Promise<void> {
    const created: Agent[] = [];
    try {
      for (const [label, extra] of cases) {
        await rejects(
          () => Agent.create({ name: 'o', logger: false, ...extra } as AgentOptions).then((a) => (created.push(a), a)),
          'KVF_ERR_INVALID_ARGUMENT',
          label,
        );
      }
    } finally {
      await Promise.all(created.map((a) => a.close()));
    }
  }

  test('provider or backend that is not a string: KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
    await refused([
      ['provider 42', { provider: 42 }],
      ['provider {}', { provider: {} }],
      ['provider true', { provider: true }],
      ['backend 42', { provider: 'tcp', backend: 42 }],
      ['backend {}', { provider: 'tcp', backend: {} }],
    ]);
  });

  test('closeTimeoutMs that is not a non-negative number: KVF_ERR_INVALID_ARGUMENT', { timeout: TEST_TIMEOUT }, async () => {
    // -1 would become 2^32 - 1 ms (49 days) in the addon: close() with a transfer stuck would never resolve.
    await refused([
      ['closeTimeoutMs -1', { provider: 'tcp', closeTimeoutMs: -1 }],
      ['closeTimeoutMs NaN', { provider: 'tcp', closeTimeoutMs: NaN }],
      ['closeTimeoutMs "10"', { provider: 'tcp', closeTimeoutMs: '10' }],
    ]);
  });
});

test('every error code these tests expect is in ERROR_CODES', () => {
  const source = readFileSync(fileURLToPath(import.meta.url), 'utf8');
  const used = new Set([...source.matchAll(/'(KVF_ERR_[A-Z0-9_]+)'/g)].map((m) => m[1]!));
  assert.ok(used.size >= 12, `found only ${used.size} codes`);
  for (const code of used) assert.ok(Object.hasOwn(ERROR_CODES, code), `${code} is not in ERROR_CODES`);
});
