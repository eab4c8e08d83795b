// Access control in the fabric layer, between real processes: a region is reachable by a peer only while it
// is advertised. remoteAccess:false regions and guessed keys are refused (tcp: by the provider, which now gets
// random keys and no FI_REMOTE_* access for local regions; shm and the same-host paths: by the owner's region
// table, since libfabric 1.17's shm RMA is a process_vm_readv that checks no key), deregistered regions are
// unreachable over every path, and a forged pid never leads to cross-memory attach on that pid.
// "Another host" is simulated by clearing the host section of the owner's metadata: the reader then has no
// table and no fast path, and only the provider can refuse.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { decodeMetadata, encodeMetadata } from '../src/index.js';
import type { RegionDescription } from '../src/fabric/metadata.js';
import { PeerProcess, closePeers, spawnOwnerAndReaders, zeroHash, type TransferSpec } from './helpers/peers.js';

const KiB = 1024;
const LEN = 256 * KiB;
const TIMEOUT = 120_000;

/** The owner's blob as a peer on another host would see it: no host identity, no pid, no region table. */
function otherHost(blob: string): string {
  const desc = decodeMetadata(Buffer.from(blob, 'base64'));
  return encodeMetadata({ ...desc, host: { id: '', pid: 0 } }).toString('base64');
}

/** The blob with `edit` applied to its description (a forged blob, correctly checksummed). */
function forge(blob: string, edit: (desc: ReturnType<typeof decodeMetadata>) => void): string {
  const desc = decodeMetadata(Buffer.from(blob, 'base64'));
  edit(desc);
  return encodeMetadata(desc).toString('base64');
}

const read = (peer: string, local: string, remote: number, length = LEN): TransferSpec => ({
  op: 'READ',
  peer,
  descs: [{ local, localOffset: 0, remote, remoteOffset: 0, length }],
  timeoutMs: 10_000,
});

/** The transfer must fail with a kvfabric code (not a timeout), and no byte may have reached `sink`. */
async function refused(reader: PeerProcess, spec: TransferSpec, sink: string, codes: string[], label: string): Promise<string> {
  const [out] = await reader.transferSettled([spec]);
  assert.ok(out && !out.ok, `${label}: the READ succeeded`);
  assert.ok(out.code !== undefined && codes.includes(out.code), `${label}: expected ${codes.join(' or ')}, got ${out.code}: ${out.message}`);
  assert.equal(await reader.hash(sink, [[0, spec.descs[0]!.length]]), zeroHash(spec.descs[0]!.length), `${label}: bytes arrived`);
  return out.code;
}

for (const provider of ['tcp', 'shm'] as const) {
  describe(`access control over ${provider}`, { timeout: TIMEOUT }, () => {
    const procs: PeerProcess[] = [];
    let owner: PeerProcess; // owns the regions
    let reader: PeerProcess; // fastPath off: the provider carries (with the table checked on this host)
    let fast: PeerProcess; // fastPath on: cma / mapped on this host
    let sinks = 0;
    const freshSink = async (who: PeerProcess, length = LEN) => {
      const key = `sink${sinks++}`;
      await who.alloc(key, length, 'zero');
      return key;
    };

    before(async () => {
      ({ owner, reader, fast } = await spawnOwnerAndReaders('', provider, procs));
    });
    after(() => closePeers(procs));

    test('a region registered with remoteAccess: false is not readable with guessed keys or a forged entry', async () => {
      const pub = await owner.alloc('pub', LEN, 'random');
      const secret = await owner.alloc('secret', LEN, 'random', false, false);
      const blob = await owner.metadata();
      const desc = decodeMetadata(Buffer.from(blob, 'base64'));
      assert.ok(!desc.regions.some((r) => r.id === secret), 'the secret region is not advertised');
      const pubDesc = desc.regions.find((r) => r.id === pub)!;
      // Over tcp: as from another host, so that only the provider stands in the way. Over shm: on this host,
      // where the provider checks no keys (its RMA is cross-memory attach) and the owner's table must refuse.
      const base = provider === 'tcp' ? otherHost(blob) : blob;
      const guesses: { label: string; region: RegionDescription }[] = [
        // The old scheme (key = region id), its neighbours, small numbers. (The advertised region's own key
        // would address the advertised region on tcp, which the peer may read.)
        { label: 'key = region id', region: { ...pubDesc, id: secret, keys: [BigInt(secret)] } },
        { label: 'key = region id + 1', region: { ...pubDesc, id: secret, keys: [BigInt(secret) + 1n] } },
        { label: 'key 0', region: { ...pubDesc, id: secret, keys: [0n] } },
        { label: 'key 1', region: { ...pubDesc, id: secret, keys: [1n] } },
      ];
      for (const { label, region } of guesses) {
        const sink = await freshSink(reader);
        const loaded = await reader.load(forge(base, (d) => d.regions.push(region)));
        assert.equal(loaded.path, 'fabric');
        const codes = provider === 'tcp' ? ['KVF_ERR_REMOTE_ACCESS', 'KVF_ERR_PROVIDER'] : ['KVF_ERR_REMOTE_ACCESS'];
        await refused(reader, read(owner.name, sink, secret), sink, codes, `${provider}, forged secret region, ${label}`);
      }
      if (provider === 'shm') {
        // An advertised region stretched past its end: the table says how long it really is.
        const sink = await freshSink(reader, 2 * LEN);
        await reader.load(forge(blob, (d) => (d.regions.find((r) => r.id === pub)!.length = 2 * LEN)));
        await refused(reader, read(owner.name, sink, pub, 2 * LEN), sink, ['KVF_ERR_REMOTE_ACCESS'], 'shm, stretched region');
      }
      // The genuine region still reads, with its bytes.
      const sink = await freshSink(reader);
      await reader.load(base);
      await reader.transfer(read(owner.name, sink, pub));
      assert.equal(await reader.hash(sink, [[0, LEN]]), await owner.hash('pub', [[0, LEN]]));
      await owner.free('pub');
      await owner.free('secret');
    });

    const paths =
      provider === 'tcp'
        ? [
            { path: 'fabric', who: () => reader, shared: false, remote: true },
            { path: 'cma', who: () => fast, shared: false, remote: false },
          ]
        : [
            { path: 'fabric', who: () => reader, shared: false, remote: false },
            { path: 'cma', who: () => fast, shared: false, remote: false },
            { path: 'mapped', who: () => fast, shared: true, remote: false },
          ];
    for (const { path, who, shared, remote } of paths) {
      test(`a deregistered region is unreachable: ${path}${remote ? ' (another host)' : ''}`, async () => {
        const r = who();
        const key = `gone-${path}`;
        const gone = await owner.alloc(key, LEN, 'random', shared);
        const blob = await owner.metadata();
        await r.load(remote ? otherHost(blob) : blob);
        // Both sizes: a small READ is copied on the posting thread, a large one on the copier threads.
        for (const length of [4 * KiB, LEN]) {
          const sink = await freshSink(r, length);
          const report = await r.transfer(read(owner.name, sink, gone, length));
          assert.equal(report.path, path, 'the path under test carried the READ');
          assert.equal(await r.hash(sink, [[0, length]]), await owner.hash(key, [[0, length]]));
        }
        await owner.free(key);
        const codes = remote ? ['KVF_ERR_REMOTE_ACCESS', 'KVF_ERR_PROVIDER'] : ['KVF_ERR_REMOTE_ACCESS'];
        for (const length of [4 * KiB, LEN]) {
          const sink = await freshSink(r, length);
          await refused(r, read(owner.name, sink, gone, length), sink, codes, `${path}, ${length} bytes after deregistration`);
        }
      });
    }

    if (provider === 'tcp') {
      for (const size of [1024 * KiB, 4 * KiB]) {
        test(`a refused READ among 16 concurrent ${size / KiB} KiB READs fails alone (another host)`, async () => {
          // tcp drops the whole connection when it refuses one op; the rail retries the others alone.
          // 4 KiB READs go by the express lane (its own connection), 1 MiB ones by the rail thread.
          const src = await owner.alloc(`src${size}`, 16 * size, 'random');
          const secret = await owner.alloc(`refused${size}`, size, 'random', false, false);
          const blob = await owner.metadata();
          const srcDesc = decodeMetadata(Buffer.from(blob, 'base64')).regions.find((r) => r.id === src)!;
          await reader.load(forge(otherHost(blob), (d) => d.regions.push({ ...srcDesc, id: secret, length: size, keys: [BigInt(secret)] })));
          const sink = await freshSink(reader, 17 * size);
          const specs: TransferSpec[] = Array.from({ length: 16 }, (_, i) => ({
            op: 'READ',
            peer: owner.name,
            descs: [{ local: sink, localOffset: i * size, remote: src, remoteOffset: i * size, length: size }],
            timeoutMs: 10_000,
          }));
          specs.splice(5, 0, {
            ...read(owner.name, sink, secret, size),
            descs: [{ local: sink, localOffset: 16 * size, remote: secret, remoteOffset: 0, length: size }],
          });
          const out = await reader.transferSettled(specs);
          const failed = out.flatMap((o, i) => (o.ok ? [] : [`${i}: ${o.code} ${o.message}`]));
          assert.deepEqual(
            failed.map((f) => f.split(':')[0]),
            ['5'],
            `only the refused READ fails; failed: ${failed.join('; ')}`,
          );
          assert.equal((out[5] as { code?: string }).code, 'KVF_ERR_REMOTE_ACCESS');
          assert.equal(await reader.hash(sink, [[0, 16 * size]]), await owner.hash(`src${size}`, [[0, 16 * size]]), 'the 16 READs landed');
          assert.equal(await reader.hash(sink, [[16 * size, size]]), zeroHash(size), 'nothing of the refused region arrived');
          // And the connection carries later transfers.
          await reader.transfer(read(owner.name, sink, src, size));
        });
      }
    }

    test('a blob with a bad endpoint address fails alone; a good peer loads and reads afterwards', async () => {
      const src = await owner.alloc('av-src', LEN, 'random');
      const blob = await owner.metadata();
      const addr = decodeMetadata(Buffer.from(blob, 'base64')).rails[0]!;
      const bad = [
        new Uint8Array(addr.length).fill(0xff), // unknown address family (shm: no NUL terminator)
        Uint8Array.from(addr, (b, i) => (i < 2 ? 0x0a : b)),
        Uint8Array.from(addr, (b, i) => (i === 2 || i === 3 ? 0 : b)), // tcp: port 0
      ];
      for (const [i, rail] of bad.entries()) {
        const forged = forge(blob, (d) => {
          d.name = `bad-${i}`;
          d.rails = [rail];
        });
        const err = await reader.load(forged).then(
          () => undefined,
          (e: Error & { remote?: { code?: string } }) => e,
        );
        // shm's address vector takes any NUL-terminated name (it fails on first use); tcp's must refuse.
        if (provider === 'tcp' || i === 0) {
          assert.ok(err, `bad address ${i} was accepted`);
          assert.match(err.remote?.code ?? '', /^KVF_ERR_(BAD_METADATA|PROVIDER)$/, `bad address ${i}: ${err.message}`);
        }
      }
      const loaded = await reader.load(otherHost(blob));
      assert.equal(loaded.path, 'fabric');
      const sink = await freshSink(reader);
      await reader.transfer(read(owner.name, sink, src));
      assert.equal(await reader.hash(sink, [[0, LEN]]), await owner.hash('av-src', [[0, LEN]]));
      await owner.free('av-src');
    });

    test('a forged pid or nonce never leads to the fast path; the provider carries the bytes instead', async () => {
      const pub = await owner.alloc('pub2', LEN, 'random');
      const blob = await owner.metadata();
      const other = process.pid; // a live process of this user that is not the owner
      for (const [label, edit] of [
        ['pid of another process', (d: ReturnType<typeof decodeMetadata>) => (d.host!.pid = other)],
        ['wrong nonce', (d: ReturnType<typeof decodeMetadata>) => (d.host!.table!.nonce = new Uint8Array(16).fill(7))],
        ['no table', (d: ReturnType<typeof decodeMetadata>) => delete d.host!.table],
      ] as const) {
        const loaded = await fast.load(forge(blob, edit));
        assert.equal(loaded.path, 'fabric', `${label}: fast path used`);
        assert.match(loaded.fastPathRefused ?? '', /region table/, label);
        const sink = await freshSink(fast);
        const report = await fast.transfer(read(owner.name, sink, pub));
        assert.equal(report.path, 'fabric', label);
        assert.equal(await fast.hash(sink, [[0, LEN]]), await owner.hash('pub2', [[0, LEN]]), label);
      }
      await owner.free('pub2');
    });
  });
}
