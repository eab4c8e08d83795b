// Device memory between two processes: the staged path (pinned chunks, the owner staging its side on request),
// the hmem path (the provider registers the device memory through FI_HMEM) and, with a GPU, the cuda-ipc path.
// Without a GPU every case runs with host memory standing in for the device ('stand-in' regions), over tcp and
// shm, so chunking, the window, the remote-staging protocol and its errors run with real providers; hmem runs
// where the provider offers FI_HMEM (shm here: host memory only, as libfabric is built without CUDA), with the
// stand-in registered through fi_mr_regattr as device memory would be. With a GPU (npm run test:gpu) the same
// cases run on cuda:0 too. Every byte is checked by sha256 in the process that owns it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { cudaStatus, decodeMetadata, encodeMetadata, type TransferReport } from '../src/index.js';
import { gpuAddon } from '../src/fabric/gpu-native.js';
import { PeerProcess, closePeers, connectAll, failsWith, prng, randomInt, spawnPeers, zeroHash, type Range, type WireDescriptor } from './helpers/peers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = Number(process.env.KVF_TEST_SEED ?? 0x57a9e);
const gpu = cudaStatus().available;
const libfabricHmem = (provider: string) => gpuAddon.libfabricHmem(provider === 'tcp' ? 'tcp;ofi_rxm' : provider);
/** Odd sizes at odd offsets: one byte, a page less one, a chunk-crossing 128 KiB + 1, 7 MiB + 3. */
const SIZES = [1, 4095, 128 * KiB + 1, 7 * MiB + 3];

interface Kinds {
  label: string;
  device: string;
  /** Whether peers on this host may take the same-host paths (cuda-ipc with a GPU). */
  fastPath: boolean;
  path: TransferReport['path'];
  /** AgentOptions.hmem; such kinds run only over providers that offer FI_HMEM. */
  hmem?: boolean;
}

const KINDS: Kinds[] = [
  { label: 'stand-in', device: 'stand-in', fastPath: true, path: 'staged' },
  { label: 'stand-in hmem', device: 'stand-in', fastPath: true, path: 'hmem', hmem: true },
  ...(gpu
    ? [
        { label: 'cuda:0 staged', device: 'cuda:0', fastPath: false, path: 'staged' as const },
        { label: 'cuda:0 cuda-ipc', device: 'cuda:0', fastPath: true, path: 'cuda-ipc' as const },
      ]
    : []),
];

/** Offsets for `lengths` in one region, each after an odd gap; returns them, the gaps and the region size. */
function place(rng: () => number, lengths: number[]): { offsets: number[]; gaps: Range[]; size: number } {
  let at = 0;
  const gaps: Range[] = [];
  const offsets = lengths.map((n) => {
    const gap = randomInt(rng, 1, 97) | 1;
    gaps.push([at, gap]);
    at += gap;
    const o = at;
    at += n;
    return o;
  });
  return { offsets, gaps, size: at };
}

const zeroHashOf = (ranges: Range[]): string => zeroHash(ranges.reduce((n, [, len]) => n + len, 0));

for (const provider of ['tcp', 'shm'] as const) {
  for (const kinds of KINDS) {
    const skip = kinds.hmem && !libfabricHmem(provider).hmem ? `${provider} offers no FI_HMEM here` : false;
    describe(`device memory over ${provider}, ${kinds.label}`, { timeout: 240_000, skip }, () => {
      const spawned: PeerProcess[] = [];
      let a: PeerProcess;
      let b: PeerProcess;
      // Small chunks so that even the small sizes cross chunks and the window fills.
      const staging = { chunkBytes: 256 * KiB, window: 3 };

      before(async () => {
        [a, b] = (await Promise.all(
          ['A', 'B'].map(async (n) => {
            const p = await PeerProcess.spawn(`${provider}-${kinds.label.replace(/[^a-z0-9]+/gi, '-')}-${n}`);
            spawned.push(p);
            await p.create(p.label, provider, { fastPath: kinds.fastPath, staging, ...(kinds.hmem ? { hmem: true } : {}) });
            return p;
          }),
        )) as [PeerProcess, PeerProcess];
      });
      after(() => closePeers(spawned), { timeout: 60_000 });

      const sides = [
        { name: 'device ↔ device', local: 'device', remote: 'device' },
        { name: 'device ↔ host', local: 'device', remote: 'host' },
        { name: 'host ↔ device', local: 'host', remote: 'device' },
      ] as const;
      for (const side of sides) {
        test(`${side.name}: WRITE then READ back, odd sizes at odd offsets, many descriptors per call`, async () => {
          const rng = prng(SEED ^ side.name.length);
          const lengths = [...SIZES, ...Array.from({ length: 12 }, () => randomInt(rng, 1, 300 * KiB))];
          const src = place(rng, lengths);
          const dst = place(rng, lengths);
          const back = place(rng, lengths);
          const tag = `${side.local}-${side.remote}`;
          const alloc = (p: PeerProcess, key: string, size: number, kind: 'device' | 'host', fill: 'random' | 'zero') =>
            kind === 'device' ? p.allocDevice(key, size, fill, kinds.device) : p.alloc(key, size, fill);
          await alloc(a, `${tag}.src`, src.size, side.local, 'random');
          await alloc(a, `${tag}.back`, back.size, side.local, 'zero');
          await alloc(b, `${tag}.dst`, dst.size, side.remote, 'zero');
          await connectAll([a, b]);
          const remote = b.regionId(`${tag}.dst`);
          const descs = (local: string, at: number[]): WireDescriptor[] =>
            lengths.map((length, i) => ({ local, localOffset: at[i]!, remote, remoteOffset: dst.offsets[i]!, length }));
          const ranges = (at: number[]): Range[] => lengths.map((n, i) => [at[i]!, n]);
          const total = lengths.reduce((x, y) => x + y, 0);

          const w = await a.transfer({ op: 'WRITE', peer: b.name, descs: descs(`${tag}.src`, src.offsets), timeoutMs: 60_000 });
          assert.equal(w.bytes, total);
          // CUDA IPC reaches a peer's device memory only: a host region there is staged. hmem reaches both.
          const path = side.remote === 'host' && kinds.path !== 'hmem' ? 'staged' : kinds.path;
          assert.equal(w.path, path, `WRITE path (${w.pathReason ?? ''})`);
          assert.equal(await b.hash(`${tag}.dst`, ranges(dst.offsets)), await a.hash(`${tag}.src`, ranges(src.offsets)), 'WRITE landed byte-exact');

          const r = await a.transfer({ op: 'READ', peer: b.name, descs: descs(`${tag}.back`, back.offsets), timeoutMs: 60_000 });
          assert.equal(r.bytes, total);
          assert.equal(r.path, path);
          assert.equal(await a.hash(`${tag}.back`, ranges(back.offsets)), await a.hash(`${tag}.src`, ranges(src.offsets)), 'READ back byte-exact');
          assert.equal(await a.hash(`${tag}.back`, back.gaps), zeroHashOf(back.gaps), 'READ wrote nothing between the ranges');
          assert.equal(await b.hash(`${tag}.dst`, dst.gaps), zeroHashOf(dst.gaps), 'WRITE wrote nothing between the ranges');
        });
      }

      test('a WRITE notification arrives after the device bytes landed', async () => {
        await a.allocDevice('n.src', 3 * MiB, 'random', kinds.device);
        await b.allocDevice('n.dst', 3 * MiB, 'zero', kinds.device);
        await connectAll([a, b]);
        const descs = [{ local: 'n.src', localOffset: 0, remote: b.regionId('n.dst'), remoteOffset: 0, length: 3 * MiB }];
        const report = await a.transfer({ op: 'WRITE', peer: b.name, descs, notification: 'landed', timeoutMs: 60_000 });
        assert.equal(report.notified, true);
        const got = await b.takeNotifications(1, 10_000);
        assert.equal(Buffer.from(got.events[0]!.dataBase64, 'base64').toString(), 'landed');
        assert.equal(await b.hash('n.dst', [[0, 3 * MiB]]), await a.hash('n.src', [[0, 3 * MiB]]));
      });

      test('out-of-range and forged requests get coded errors, and the peer keeps serving', async () => {
        await a.allocDevice('e.local', MiB, 'zero', kinds.device);
        await b.allocDevice('e.remote', MiB, 'random', kinds.device);
        await connectAll([a, b]);
        const remote = b.regionId('e.remote');
        const read = (remoteOffset: number, length: number, timeoutMs = 20_000) =>
          a.transfer({ op: 'READ', peer: b.name, descs: [{ local: 'e.local', localOffset: 0, remote, remoteOffset, length }], timeoutMs });
        await failsWith(read(MiB - 10, 11), ['KVF_ERR_OUT_OF_RANGE'], 'a range past the end');
        await failsWith(read(0, MiB + 1), ['KVF_ERR_OUT_OF_RANGE'], 'a range longer than the region');
        // A peer that claims another token (its metadata forged) is refused by the owner itself. On the hmem path the
        // fabric registration is the capability: across hosts the owner's NIC checks its keys; on this host (shm
        // checks no key) the owner's region table refuses a registration it does not advertise, here moved by a page.
        const desc = decodeMetadata(Buffer.from(await b.metadata(), 'base64'));
        const forge = (d: NonNullable<typeof desc.devices>[number]) =>
          d.fabric ? { ...d, fabric: { ...d.fabric, base: d.fabric.base + 4096n } } : { ...d, token: new Uint8Array(16).fill(7), ipc: undefined };
        await a.load(encodeMetadata({ ...desc, devices: desc.devices!.map(forge) }).toString('base64'));
        await failsWith(read(0, 100), ['KVF_ERR_REMOTE_ACCESS'], 'forged credentials');
        await connectAll([a, b]);
        const ok = await read(0, MiB);
        assert.equal(ok.bytes, MiB);
        assert.equal(await a.hash('e.local', [[0, MiB]]), await b.hash('e.remote', [[0, MiB]]));
      });
    });
  }
}

describe('staging under pressure (stand-in, tcp)', { timeout: 240_000 }, () => {
  const spawned: PeerProcess[] = [];
  let a: PeerProcess;
  let b: PeerProcess;
  let c: PeerProcess;

  before(async () => {
    [a, b, c] = (await spawnPeers(['press-A', 'press-B', 'press-C'], 'tcp', spawned)) as [PeerProcess, PeerProcess, PeerProcess];
  });
  after(() => closePeers(spawned), { timeout: 60_000 });

  test('two requesters against an owner with few chunks: every transfer completes byte-exact', async () => {
    // The owner lends 2 chunks (its default 16 would hide the contention), so requests wait for chunks to come free.
    await closePeers([b]);
    b = await PeerProcess.spawn('press-B2');
    spawned.push(b);
    await b.create('press-B2', 'tcp', { staging: { chunkBytes: 64 * KiB, serveChunks: 2, perPeer: 1 } });
    await b.allocDevice('dev', 8 * MiB, 'random', 'stand-in');
    await a.allocDevice('into', 8 * MiB, 'zero', 'stand-in');
    await c.alloc('into', 8 * MiB, 'zero');
    await connectAll([a, b, c]);
    const descs = (local: string) => [{ local, localOffset: 0, remote: b.regionId('dev'), remoteOffset: 0, length: 8 * MiB }];
    const [ra, rc] = await Promise.all([
      a.transfer({ op: 'READ', peer: b.name, descs: descs('into'), timeoutMs: 120_000 }),
      c.transfer({ op: 'READ', peer: b.name, descs: descs('into'), timeoutMs: 120_000 }),
    ]);
    assert.equal(ra.bytes + rc.bytes, 16 * MiB);
    const want = await b.hash('dev', [[0, 8 * MiB]]);
    assert.equal(await a.hash('into', [[0, 8 * MiB]]), want);
    assert.equal(await c.hash('into', [[0, 8 * MiB]]), want);
  });

  test('an owner that does not know the requester: the request times out with a code, not a hang', async () => {
    const d = await PeerProcess.spawn('press-D');
    spawned.push(d);
    await d.create('press-D', 'tcp');
    await a.allocDevice('lonely', MiB, 'zero', 'stand-in');
    await d.allocDevice('unknown-owner', MiB, 'random', 'stand-in');
    // A loads D's metadata, but D never loads A's: D cannot answer.
    await a.load(await d.metadata());
    const started = Date.now();
    const descs = [{ local: 'lonely', localOffset: 0, remote: d.regionId('unknown-owner'), remoteOffset: 0, length: MiB }];
    const err = await failsWith(a.transfer({ op: 'READ', peer: d.name, descs, timeoutMs: 1500 }), ['KVF_ERR_TIMEOUT'], 'an owner that cannot answer');
    assert.match(err.message, /metadata/);
    assert.ok(Date.now() - started < 20_000);
  });

  test('a killed owner fails a staged READ with a code', async () => {
    await a.allocDevice('orphan', 4 * MiB, 'zero', 'stand-in');
    await c.allocDevice('doomed', 4 * MiB, 'random', 'stand-in');
    await connectAll([a, c]);
    c.kill();
    const descs = [{ local: 'orphan', localOffset: 0, remote: c.regionId('doomed'), remoteOffset: 0, length: 4 * MiB }];
    await failsWith(
      a.transfer({ op: 'READ', peer: c.name, descs, timeoutMs: 3000 }),
      ['KVF_ERR_TIMEOUT', 'KVF_ERR_PEER_UNREACHABLE', 'KVF_ERR_PROVIDER'],
      'a killed owner',
    );
  });
});
