// Grants between real processes: agent.grant() lets one peer READ or WRITE exactly one range of a region
// (registered with remoteAccess: false, so nothing else of it is reachable), until revoke(). Every path is
// covered: tcp from "another host" (only the provider can refuse: its MR bounds and FI_REMOTE_* flags), the
// shm provider on this host (the owner's region table refuses, since shm's RMA checks no key), and the
// same-host fast path (cma; mapped for shared memory), which checks the table before every copy.
// "Another host" keeps the owner's table nonce (real metadata always carries it, and grants are bound to it)
// but drops the host identity and pid, so the reader has no table and no fast path.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { decodeGrant, decodeMetadata, encodeGrant, encodeMetadata, type GrantDescription } from '../src/index.js';
import { PeerProcess, failsWith, closePeers, spawnOwnerAndReaders, zeroHash, type TransferSpec } from './helpers/peers.js';

const KiB = 1024;
const POOL = 1024 * KiB;
const TIMEOUT = 180_000;
// The grants each test makes over the pool: [offset, length, access].
const G1 = [64 * KiB, 128 * KiB] as const; // read
const G2 = [256 * KiB, 64 * KiB] as const; // read
const GW = [512 * KiB, 64 * KiB] as const; // write

function otherHost(blob: string): string {
  const desc = decodeMetadata(Buffer.from(blob, 'base64'));
  return encodeMetadata({ ...desc, host: { id: '', pid: 0, ...(desc.host?.table ? { table: desc.host.table } : {}) } }).toString('base64');
}

/** Grant bytes (base64) with `edit` applied: a forged grant with a correct CRC. */
function forgeGrant(bytes: string, edit: (g: GrantDescription) => void): string {
  const g = decodeGrant(Buffer.from(bytes, 'base64'));
  edit(g);
  return Buffer.from(encodeGrant(g)).toString('base64');
}

const spec = (op: 'READ' | 'WRITE', peer: string, local: string, remote: number, remoteOffset: number, length: number): TransferSpec => ({
  op,
  peer,
  descs: [{ local, localOffset: 0, remote, remoteOffset, length }],
  timeoutMs: 10_000,
});

for (const provider of ['tcp', 'shm'] as const) {
  describe(`grants over ${provider}`, { timeout: TIMEOUT }, () => {
    const procs: PeerProcess[] = [];
    let owner: PeerProcess;
    let reader: PeerProcess; // fastPath off: the provider carries
    let fast: PeerProcess; // fastPath on: cma, or mapped for shared memory
    let n = 0;
    const fresh = async (who: PeerProcess, length: number, fill: 'zero' | 'random' = 'zero') => {
      const key = `b${n++}`;
      await who.alloc(key, length, fill);
      return key;
    };

    before(async () => {
      ({ owner, reader, fast } = await spawnOwnerAndReaders('g', provider, procs));
    });
    after(() => closePeers(procs));

    const paths = [
      { path: 'fabric', who: () => reader, shared: false, remote: provider === 'tcp' },
      { path: 'cma', who: () => fast, shared: false, remote: false },
      { path: 'mapped', who: () => fast, shared: true, remote: false },
    ];
    for (const { path, who, shared, remote } of paths) {
      const where = `${path}${remote ? ' (another host)' : ' (this host)'}`;
      // Refusals that only the provider can make (another host) may surface as its error; the rest are ours.
      const refusedCodes = remote ? ['KVF_ERR_REMOTE_ACCESS', 'KVF_ERR_PROVIDER'] : ['KVF_ERR_REMOTE_ACCESS'];

      /** The transfer fails with a code, and neither the local sink nor (WRITE) the owner's range changed. */
      const refused = async (r: PeerProcess, s: TransferSpec, codes: string[], label: string, ownerRange?: [string, number, number]) => {
        const before = ownerRange ? await owner.hash(ownerRange[0], [[ownerRange[1], ownerRange[2]]]) : undefined;
        const [out] = await r.transferSettled([s]);
        assert.ok(out && !out.ok, `${where}: ${label}: succeeded`);
        assert.ok(out.code !== undefined && codes.includes(out.code), `${where}: ${label}: expected ${codes.join(' or ')}, got ${out.code}: ${out.message}`);
        const d = s.descs[0]!;
        if (s.op === 'READ') assert.equal(await r.hash(d.local, [[0, d.length]]), zeroHash(d.length), `${where}: ${label}: bytes arrived`);
        if (ownerRange)
          assert.equal(await owner.hash(ownerRange[0], [[ownerRange[1], ownerRange[2]]]), before, `${where}: ${label}: the owner's bytes changed`);
      };

      test(`read and write grants over a remoteAccess:false pool, then revoke: ${where}`, async () => {
        const r = who();
        const pool = `pool-${path}`;
        await owner.alloc(pool, POOL, 'random', shared, false);
        const g1 = await owner.grant(pool, G1[0], G1[1], 'read');
        const g2 = await owner.grant(pool, G2[0], G2[1], 'read');
        const gw = await owner.grant(pool, GW[0], GW[1], 'write');
        const blob = await owner.metadata();
        assert.equal(decodeMetadata(Buffer.from(blob, 'base64')).regions.length, 0, 'the pool is not advertised');
        const loaded = await r.load(remote ? otherHost(blob) : blob);
        // Nothing is advertised: a fast-path reader probes cross-memory attach on the first grant it adds.
        if (path === 'fabric') assert.equal(loaded.path, 'fabric');
        const id1 = await r.addGrant(owner.name, g1.bytes);
        const id2 = await r.addGrant(owner.name, g2.bytes);
        const idw = await r.addGrant(owner.name, gw.bytes);
        assert.deepEqual([id1, id2, idw], [g1.id, g2.id, gw.id]);

        // READ: the whole grant, and a small piece (copied on the posting thread on the same-host paths).
        for (const [off, len] of [
          [0, G1[1]],
          [4 * KiB, 4 * KiB],
        ] as const) {
          const sink = await fresh(r, len);
          const report = await r.transfer(spec('READ', owner.name, sink, id1, off, len));
          assert.equal(report.path, path, 'the path under test carried the READ');
          assert.equal(await r.hash(sink, [[0, len]]), await owner.hash(pool, [[G1[0] + off, len]]), 'byte-exact');
        }
        // Outside the grant (one byte past its end, or from before its start): refused before posting.
        const sink8 = await fresh(r, 8 * KiB);
        await refused(r, spec('READ', owner.name, sink8, id1, G1[1] - 4 * KiB, 8 * KiB), ['KVF_ERR_OUT_OF_RANGE'], 'READ past the grant');
        // The pool itself is not reachable by id (not advertised; access-control.test.ts covers forged entries).
        await refused(r, spec('READ', owner.name, sink8, owner.regionId(pool), 0, 8 * KiB), ['KVF_ERR_UNKNOWN_REGION'], 'READ of the pool');

        // WRITE into the write grant lands exactly there; READ of it and WRITE into a read grant are refused here.
        const src = await fresh(r, GW[1], 'random');
        await r.transfer(spec('WRITE', owner.name, src, idw, 0, GW[1]));
        assert.equal(await owner.hash(pool, [[GW[0], GW[1]]]), await r.hash(src, [[0, GW[1]]]), 'the WRITE landed byte-exact');
        await refused(r, spec('READ', owner.name, await fresh(r, 4 * KiB), idw, 0, 4 * KiB), ['KVF_ERR_REMOTE_ACCESS'], 'READ of a write grant');
        await refused(r, spec('WRITE', owner.name, src, id1, 0, 4 * KiB), ['KVF_ERR_REMOTE_ACCESS'], 'WRITE into a read grant', [pool, G1[0], 4 * KiB]);

        // A forged local view: the read grant's bytes claiming write access (and the write grant's claiming read).
        // On this host the owner's table refuses them when added; from another host they are added, and the
        // provider refuses the operation (the MRs carry only the other remote flag).
        await r.removeGrant(owner.name, id1);
        await r.removeGrant(owner.name, idw);
        const asWrite = forgeGrant(g1.bytes, (g) => (g.access = 'write'));
        const asRead = forgeGrant(gw.bytes, (g) => (g.access = 'read'));
        if (remote) {
          assert.equal(await r.addGrant(owner.name, asWrite), id1);
          assert.equal(await r.addGrant(owner.name, asRead), idw);
          await refused(r, spec('WRITE', owner.name, src, id1, 0, 4 * KiB), refusedCodes, 'provider: WRITE into a read grant', [pool, G1[0], 4 * KiB]);
          await refused(r, spec('READ', owner.name, await fresh(r, 4 * KiB), idw, 0, 4 * KiB), refusedCodes, 'provider: READ of a write grant');
          await r.removeGrant(owner.name, id1);
          await r.removeGrant(owner.name, idw);
        } else {
          await failsWith(r.addGrant(owner.name, asWrite), ['KVF_ERR_REMOTE_ACCESS'], 'read grant forged to write');
          await failsWith(r.addGrant(owner.name, asRead), ['KVF_ERR_REMOTE_ACCESS'], 'write grant forged to read');
        }
        // A grant stretched past its end (forged length): refused by the table here, by the MR's bounds there.
        const stretched = forgeGrant(g1.bytes, (g) => (g.length = 2 * G1[1]));
        if (remote) {
          await r.addGrant(owner.name, stretched);
          await refused(r, spec('READ', owner.name, await fresh(r, 8 * KiB), id1, G1[1], 8 * KiB), refusedCodes, 'provider: READ past a stretched grant');
          await r.removeGrant(owner.name, id1);
        } else {
          await failsWith(r.addGrant(owner.name, stretched), ['KVF_ERR_REMOTE_ACCESS'], 'stretched grant');
        }
        await r.addGrant(owner.name, g1.bytes);

        // Revoke g1: every READ of it fails with a code and moves nothing; g2 keeps working.
        await owner.revoke(g1.id);
        await owner.revoke(g1.id); // idempotent
        for (const len of [4 * KiB, G1[1]]) {
          await refused(r, spec('READ', owner.name, await fresh(r, len), id1, 0, len), refusedCodes, `READ of ${len} bytes after revoke`);
        }
        const sink2 = await fresh(r, G2[1]);
        const report = await r.transfer(spec('READ', owner.name, sink2, id2, 0, G2[1]));
        assert.equal(report.path, path);
        assert.equal(await r.hash(sink2, [[0, G2[1]]]), await owner.hash(pool, [[G2[0], G2[1]]]), 'the other grant still reads');

        // The revoked grant's bytes, added again: refused when added on this host; at first use from another host.
        await r.removeGrant(owner.name, id1);
        if (remote) {
          await r.addGrant(owner.name, g1.bytes);
          await refused(r, spec('READ', owner.name, await fresh(r, 4 * KiB), id1, 0, 4 * KiB), refusedCodes, 're-added revoked grant');
        } else {
          await failsWith(r.addGrant(owner.name, g1.bytes), ['KVF_ERR_REMOTE_ACCESS'], 're-added revoked grant');
        }

        // Deregistering the pool ends its other grants.
        await owner.free(pool);
        await refused(r, spec('READ', owner.name, await fresh(r, 4 * KiB), id2, 0, 4 * KiB), refusedCodes, 'READ after the pool was deregistered');
      });
    }

    test('grant bytes that are truncated, corrupt, forged or of another owner are refused with a code', async () => {
      const pool = 'pool-bad';
      await owner.alloc(pool, 64 * KiB, 'random', false, false);
      const g = await owner.grant(pool, 0, 4 * KiB, 'read');
      await reader.load(await owner.metadata());
      await fast.load(await reader.metadata()); // so that `fast` knows the reader as a peer of its own
      const raw = Buffer.from(g.bytes, 'base64');
      const mutate = (f: (b: Buffer) => void) => {
        const b = Buffer.from(raw);
        f(b);
        return b.toString('base64');
      };
      const bad: [string, string][] = [
        ['empty', ''],
        ['truncated by one byte', raw.subarray(0, raw.length - 1).toString('base64')],
        ['one byte longer', Buffer.concat([raw, Buffer.alloc(1)]).toString('base64')],
        ['a flipped bit (CRC)', mutate((b) => (b[20]! ^= 1))],
        ['bad magic', mutate((b) => (b[0] = 0))],
        ['another version', mutate((b) => (b[4] = 9))],
        ['another owner name', forgeGrant(g.bytes, (d) => (d.owner = reader.name))],
        ['another instance of the owner (digest)', forgeGrant(g.bytes, (d) => (d.digest = new Uint8Array(16).fill(7)))],
        ['zero length', forgeGrant(g.bytes, (d) => (d.length = 0))],
        ['two keys for one rail', forgeGrant(g.bytes, (d) => d.keys.push(1n))],
      ];
      for (const [label, bytes] of bad) {
        await failsWith(reader.addGrant(owner.name, bytes), ['KVF_ERR_BAD_METADATA'], label);
      }
      // A real grant of the owner, presented as the reader's: the owner check refuses it.
      await failsWith(fast.addGrant(reader.name, g.bytes), ['KVF_ERR_BAD_METADATA'], "the owner's grant as the reader's");
      // And the genuine bytes are accepted, once.
      await reader.addGrant(owner.name, g.bytes);
      await failsWith(reader.addGrant(owner.name, g.bytes), ['KVF_ERR_INVALID_ARGUMENT'], 'added twice');
      await owner.free(pool);
    });
  });
}

describe('grant bookkeeping (one process)', { timeout: TIMEOUT }, () => {
  test('thousands of live grants, each with its own keys; the table bounds them with a code; all end with their region', async () => {
    const { Agent, Grant } = await import('../src/index.js');
    const agent = await Agent.create({ name: 'grant-count', provider: 'tcp', logger: false });
    try {
      const pool = agent.allocate(1024 * KiB, { remoteAccess: false });
      const grants = Array.from({ length: 4096 }, (_, i) => agent.grant(pool, { offset: i * 256, length: 256, access: i % 2 ? 'write' : 'read' }));
      assert.ok(grants.every((g) => g instanceof Grant && g.live));
      assert.equal(agent.liveGrants, 4096);
      const keys = new Set(grants.map((g) => decodeGrant(g.bytes).keys[0]));
      assert.equal(keys.size, 4096, 'every grant has a fresh key');
      grants.slice(0, 2048).forEach((g) => g.revoke());
      assert.equal(agent.liveGrants, 2048);
      // Fill the region table (2^18 slots for regions and grants together): the next grant fails with a code.
      const more: InstanceType<typeof Grant>[] = [];
      let err: unknown;
      try {
        for (;;) more.push(agent.grant(pool, { offset: 0, length: 64, access: 'read' }));
      } catch (e) {
        err = e;
      }
      assert.equal((err as { code?: string }).code, 'KVF_ERR_TOO_LARGE', String(err));
      assert.equal(agent.liveGrants, 2 ** 18, 'the table holds 2^18 live grants (the pool, not advertised, takes no slot)');
      more.pop()!.revoke();
      agent.grant(pool, { offset: 0, length: 64, access: 'read' }); // a freed slot is usable again
      // Deregistering the region ends every grant over it.
      pool.deregister();
      assert.equal(agent.liveGrants, 0);
      assert.ok(grants.every((g) => !g.live) && more.every((g) => !g.live));
      assert.throws(() => agent.grant(pool, { offset: 0, length: 1, access: 'read' }), { code: 'KVF_ERR_UNKNOWN_REGION' });
    } finally {
      await agent.close();
    }
  });
});
