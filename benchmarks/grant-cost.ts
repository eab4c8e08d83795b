// What a per-request grant costs: for each request the owner grants N ranges of 1 MiB (agent.grant: one
// registration per rail with fresh keys, a region-table entry, the bytes serialised) and revokes them again
// (table entry cleared, registrations closed); the reader's side (remotePeer.addGrant + removeGrant: parse,
// check, add) is timed separately. Baselines in the same run, same process: an empty timed loop (the clock's
// own cost) and one 4 KiB READ of an advertised region. Owner and reader are two agents in one process (the
// READ goes through the provider: fast path off). Prints a table and writes JSON.
//
//   node --import tsx benchmarks/grant-cost.ts [--providers tcp,shm] [--iters 2000] [--out benchmarks/out/grant-cost.json]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Agent } from '../src/index.js';
import { addon } from '../src/fabric/native.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    providers: { type: 'string', default: 'tcp,shm' },
    iters: { type: 'string', default: '2000' },
    out: { type: 'string', default: join(here, 'out', 'grant-cost.json') },
  },
});
const iters = Number(values.iters);
const MiB = 1 << 20;
const COUNTS = [1, 4, 16];

interface Row {
  provider: string;
  what: string;
  grantsPerRequest: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  /** p50 divided by the grants per request (0 for the baselines). */
  p50UsPerGrant: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function row(provider: string, what: string, n: number, samples: number[]): Row {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return {
    provider,
    what,
    grantsPerRequest: n,
    p50Us: percentile(s, 50),
    p99Us: percentile(s, 99),
    meanUs: mean,
    p50UsPerGrant: n > 0 ? percentile(s, 50) / n : 0,
  };
}

/** µs per call of `fn`, `iters` samples after `iters / 10` warm-up calls. */
async function time(fn: () => void | Promise<void>): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < iters + Math.ceil(iters / 10); i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    const t1 = process.hrtime.bigint();
    if (i >= Math.ceil(iters / 10)) out.push(Number(t1 - t0) / 1e3);
  }
  return out;
}

async function measure(provider: string): Promise<Row[]> {
  const owner = await Agent.create({ name: `grant-owner-${provider}`, provider, logger: false, fastPath: false });
  const reader = await Agent.create({ name: `grant-reader-${provider}`, provider, logger: false, fastPath: false });
  const rows: Row[] = [];
  try {
    // The KV pool, kept to grants: registered without remote access, as a serving worker would.
    const pool = owner.allocate(16 * MiB, { remoteAccess: false });
    const advertised = owner.allocate(4096); // the baseline READ's source
    advertised.bytes.fill(7);
    const sink = reader.allocate(4096);
    const peer = reader.loadRemoteMetadata(owner.getLocalMetadata());
    await reader.warmup(peer);

    rows.push(row(provider, 'baseline: nothing (timer only)', 0, await time(() => {})));
    const readOnce = () => reader.read(peer, [{ local: sink, localOffset: 0, remote: advertised.id, remoteOffset: 0, length: 4096 }]).then(() => {});
    rows.push(row(provider, 'baseline: one 4 KiB READ', 0, await time(readOnce)));
    if (sink.bytes[0] !== 7) throw new Error('the baseline READ did not bring the bytes');

    for (const n of COUNTS) {
      const grantRevoke = () => {
        const gs = Array.from({ length: n }, (_, i) => owner.grant(pool, { offset: i * MiB, length: MiB, access: 'read' }));
        for (const g of gs) g.revoke();
      };
      rows.push(row(provider, 'owner: grant + revoke', n, await time(grantRevoke)));
      // The reader's side, against grants made once (their bytes are parsed and added anew every time).
      const gs = Array.from({ length: n }, (_, i) => owner.grant(pool, { offset: i * MiB, length: MiB, access: 'read' }));
      const addRemove = () => {
        const ids = gs.map((g) => peer.addGrant(g.bytes));
        for (const id of ids) peer.removeGrant(id);
      };
      rows.push(row(provider, 'reader: addGrant + removeGrant', n, await time(addRemove)));
      // And a READ through one of them, so the number above is of something that works.
      const id = peer.addGrant(gs[0]!.bytes);
      await reader.read(peer, [{ local: sink, localOffset: 0, remote: id, remoteOffset: 0, length: 4096 }]);
      peer.removeGrant(id);
      for (const g of gs) g.revoke();
    }
    if (owner.liveGrants !== 0) throw new Error(`${owner.liveGrants} grants left live`);
  } finally {
    await reader.close();
    await owner.close();
  }
  return rows;
}

const all: Row[] = [];
for (const provider of values.providers!.split(',')) all.push(...(await measure(provider)));

const f = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(2));
console.log(`grant cost: ${iters} requests per row, 1 MiB per grant, libfabric ${addon.libfabricVersion()}`);
console.log('| provider | what | grants/request | p50 µs | p99 µs | mean µs | p50 µs per grant |');
console.log('|---|---|---|---|---|---|---|');
for (const r of all) {
  console.log(
    `| ${r.provider} | ${r.what} | ${r.grantsPerRequest || '-'} | ${f(r.p50Us)} | ${f(r.p99Us)} | ${f(r.meanUs)} | ${r.grantsPerRequest ? f(r.p50UsPerGrant) : '-'} |`,
  );
}
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify(
    {
      benchmark: 'grant-cost',
      version: 1,
      date: new Date().toISOString(),
      iters,
      grantBytes: MiB,
      machine: describeMachine(),
      libfabric: addon.libfabricVersion(),
      rows: all,
    },
    null,
    2,
  ),
);
console.log(`wrote ${values.out}`);
