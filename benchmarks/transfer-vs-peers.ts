// Issue 5's acceptance ratios, measured side by side: for every criterion kvfabric (`kvfabric bench`) and its
// baseline (benchmarks/peers/: the raw-libfabric program or memcpy) run alternately, N times each, and the best
// of each is compared, so that both see the same machine (on a small shared VM the speed drifts by tens of per
// cent within minutes). ucx_perftest comes from benchmarks/peers/run.ts, run first. Prints the ratio table and
// writes benchmarks/out/transfer-vs-peers.json.
//
//   npm run bench:transfer -- [--repeat 3] [--duration 2] [--skip-peers]
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const { values } = parseArgs({
  options: {
    repeat: { type: 'string', default: '3' },
    duration: { type: 'string', default: '2' },
    'skip-peers': { type: 'boolean', default: false },
    out: { type: 'string', default: join(here, 'out', 'transfer-vs-peers.json') },
  },
});
const repeat = Number(values.repeat);
const duration = values.duration!;
const peersJson = join(here, 'out', 'peers.json');
const bin = join(here, 'peers', 'build');

if (!values['skip-peers']) {
  run('bash', [join(here, 'peers', 'build.sh')]);
  run(process.execPath, ['--import', 'tsx', join(here, 'peers', 'run.ts'), '--repeat', String(repeat), '--duration', duration, '--only', 'ucx']);
}
const peers = JSON.parse(readFileSync(peersJson, 'utf8')) as { date: string; outcomes: { name: string; best?: number; error?: string }[] };
const peer = (name: string): number => {
  const o = peers.outcomes.find((x) => x.name === name);
  if (o?.best === undefined) throw new Error(`peer result '${name}' missing: ${o?.error ?? 'not run'}`);
  return o.best;
};

interface Point {
  gbps: number;
  costUsPerDesc: number;
  latencyMs: { p50: number };
  wallLatencyMs: { p50: number };
  path: string;
  rails: number;
}

interface Baseline {
  /** A program in benchmarks/peers/build/ and its arguments. */
  program: string;
  args: string[];
  /** The field of its JSON line that is compared. */
  metric: string;
}

interface SideBySide {
  kvf: { best: number; runs: number[]; point: Point; points: Point[] };
  base: { best: number; runs: number[] };
  command: string;
  baseCommand: string;
}

/** kvfabric's case and its baseline, alternately `repeat` times; best of each (`better` is the direction). */
function sideBySide(args: string[], pick: (p: Point) => number, base: Baseline, better: 'max' | 'min'): SideBySide {
  const json = join(tmpdir(), `kvf-bench-${process.pid}.json`);
  const full = ['bench', ...args, '--duration', duration, '--no-progress', '--json', json];
  const kvfRuns: { v: number; p: Point }[] = [];
  const baseRuns: number[] = [];
  for (let i = 0; i < repeat; i++) {
    run(process.execPath, [join(root, 'dist', 'cli', 'main.js'), ...full]);
    const p = (JSON.parse(readFileSync(json, 'utf8')) as { points: Point[] }).points[0]!;
    kvfRuns.push({ v: pick(p), p });
    baseRuns.push(baselineRun(base));
  }
  const order = (a: number, b: number) => (better === 'max' ? b - a : a - b);
  console.error(
    `kvfabric ${args.join(' ')}: ${kvfRuns.map((r) => r.v.toFixed(3)).join(', ')} | ${base.program} ${base.args.join(' ')}: ${baseRuns.map((v) => v.toFixed(3)).join(', ')}`,
  );
  const sorted = [...kvfRuns].sort((a, b) => order(a.v, b.v));
  return {
    kvf: { best: sorted[0]!.v, runs: kvfRuns.map((r) => r.v), point: sorted[0]!.p, points: kvfRuns.map((r) => r.p) },
    base: { best: [...baseRuns].sort(order)[0]!, runs: baseRuns },
    command: `kvfabric ${full.slice(0, -2).join(' ')}`,
    baseCommand: `benchmarks/peers/build/${base.program} ${base.args.join(' ')}`,
  };
}

function baselineRun(base: Baseline): number {
  const r = spawnSync(join(bin, base.program), base.args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  if (r.status !== 0) throw new Error(`${base.program} exited ${r.status}: run benchmarks/peers/build.sh first?`);
  const line = r.stdout.trim().split('\n').pop()!;
  const j = JSON.parse(line) as Record<string, unknown>;
  if (j.verified === false) throw new Error(`${base.program}: data check failed: ${line}`);
  return Number(j[base.metric]);
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}`);
}

const raw = (args: string[], metric: string): Baseline => ({ program: 'fi_raw_bench', args: [...args, '--duration', duration], metric });
const fabric = ['--fast-path', 'off'];
// 64 MiB in flight as 16 transfers of 4 blocks: the raw program keeps 64 ops in flight and refills them one by
// one, and a finer refill than 4 × 16 kept tcp WRITE closer to it (5.05–5.42 against 3.37–5.10 GB/s, alternating).
const mib = ['--block-sizes', '1M', '--pool', '256M', '--depth', '16', '--batch', '4'];
const rows: {
  criterion: string;
  kvfabric: string;
  baseline: string;
  ratio: number;
  target: string;
  pass: boolean;
  command: string;
  baselineCommand: string;
  runs: number[];
  baselineRuns: number[];
}[] = [];
const f = (x: number, d = 2) => x.toFixed(d);
function row(criterion: string, m: SideBySide, kv: number, base: number, unit: string, ratio: number, target: string, pass: boolean, digits = 2): void {
  rows.push({
    criterion,
    kvfabric: `${f(kv, digits)} ${unit}`,
    baseline: `${f(base, digits)} ${unit}`,
    ratio,
    target,
    pass,
    command: m.command,
    baselineCommand: m.baseCommand,
    runs: m.kvf.runs,
    baselineRuns: m.base.runs,
  });
}

for (const op of ['WRITE', 'READ'] as const) {
  const m = sideBySide(
    ['--provider', 'tcp', '--op', op, ...mib, ...fabric],
    (p) => p.gbps,
    raw(['--mode', 'bw', '--provider', 'tcp', '--op', op.toLowerCase(), '--block', '1048576', '--depth', '64'], 'gbps'),
    'max',
  );
  row(
    `tcp ${op} 1 MiB, 256 MiB pool, 1 rail vs raw libfabric`,
    m,
    m.kvf.best,
    m.base.best,
    'GB/s',
    m.kvf.best / m.base.best,
    '≥ 0.95',
    m.kvf.best / m.base.best >= 0.95,
  );
}
{
  const m = sideBySide(
    ['--provider', 'tcp', '--op', 'WRITE', '--rails', '4', ...mib, ...fabric],
    (p) => p.gbps,
    raw(['--mode', 'bw', '--provider', 'tcp', '--op', 'write', '--rails', '4'], 'gbps'),
    'max',
  );
  const ucx = peer('ucx_perftest ucp_put_bw tcp 1 MiB');
  rows.push({
    criterion: 'tcp WRITE 1 MiB, 4 rails vs ucx_perftest put bw (tcp)',
    kvfabric: `${f(m.kvf.best)} GB/s`,
    baseline: `${f(ucx)} GB/s`,
    ratio: m.kvf.best / ucx,
    target: '≥ 2',
    pass: m.kvf.best / ucx >= 2,
    command: m.command,
    baselineCommand: 'benchmarks/peers/run.ts --only ucx',
    runs: m.kvf.runs,
    baselineRuns: [ucx],
  });
  row('tcp WRITE 1 MiB, 4 rails vs raw libfabric on 4 rails (for reference)', m, m.kvf.best, m.base.best, 'GB/s', m.kvf.best / m.base.best, '—', true);
}
{
  const cma = ['--provider', 'shm', '--op', 'READ', ...mib, '--fast-path', 'on'];
  const m = sideBySide(cma, (p) => p.gbps, { program: 'memcpy_bench', args: ['--size', String(256 << 20), '--duration', duration], metric: 'gbps' }, 'max');
  row(
    `same host READ 1 MiB (path ${m.kvf.point.path}) vs single-thread memcpy`,
    m,
    m.kvf.best,
    m.base.best,
    'GB/s',
    m.kvf.best / m.base.best,
    '≥ 0.6',
    m.kvf.best / m.base.best >= 0.6,
  );
  const s = sideBySide(cma, (p) => p.gbps, raw(['--mode', 'bw', '--provider', 'shm', '--op', 'read', '--block', '1048576', '--depth', '64'], 'gbps'), 'max');
  row(
    `same host READ 1 MiB (path ${s.kvf.point.path}) vs the shm provider (raw)`,
    s,
    s.kvf.best,
    s.base.best,
    'GB/s',
    s.kvf.best / s.base.best,
    '≥ 4',
    s.kvf.best / s.base.best >= 4,
  );
}
for (const provider of ['tcp', 'shm']) {
  const m = sideBySide(
    ['--provider', provider, '--op', 'WRITE', '--block-sizes', '4K', '--batch', '1024', '--depth', '1', '--pool', '256M', ...fabric],
    (p) => p.costUsPerDesc,
    raw(['--mode', 'post', '--provider', provider, '--op', 'write', '--block', '4096', '--batch', '1024'], 'postNsPerDesc'),
    'min',
  );
  const base = m.base.best / 1000;
  row(
    `${provider} posting, prepared list, 1024 × 4 KiB WRITE: cost per descriptor − raw`,
    m,
    m.kvf.best,
    base,
    'µs',
    m.kvf.best - base,
    '≤ +0.3 µs',
    m.kvf.best - base <= 0.3,
    3,
  );
}
// Latency, measured two ways in the same runs (`kvfabric bench --latency`: busy polling on both sides, as the
// raw program spins on both): the addon's own post → completion time, which is what the raw program times,
// and JS call → promise settled, which adds Node's call and promise machinery on top.
for (const provider of ['tcp', 'shm']) {
  const m = sideBySide(
    ['--provider', provider, '--latency', ...fabric],
    (p) => p.latencyMs.p50 * 1000,
    raw(['--mode', 'lat', '--provider', provider, '--op', 'read', '--block', '4096'], 'p50Us'),
    'min',
  );
  row(
    `${provider} 4 KiB READ latency p50, addon post → completion (as raw times it)`,
    m,
    m.kvf.best,
    m.base.best,
    'µs',
    m.kvf.best / m.base.best,
    '≤ 1.3',
    m.kvf.best / m.base.best <= 1.3,
    1,
  );
  const wall = Math.min(...m.kvf.points.map((p) => p.wallLatencyMs.p50 * 1000));
  row(`${provider} 4 KiB READ latency p50, JS call → promise settled`, m, wall, m.base.best, 'µs', wall / m.base.best, '≤ 1.3', wall / m.base.best <= 1.3, 1);
}
// Between two processes on one host kvfabric's default is not the shm provider but its fast path (shm has no
// express lane: see docs/design.md): cross-memory attach for private memory, a memcpy through a mapping for
// shared pools (allocate({ shared })). Both against raw shm, the same criterion.
for (const pool of ['off', 'on']) {
  const m = sideBySide(
    ['--provider', 'shm', '--latency', '--fast-path', 'on', '--shared-pool', pool],
    (p) => p.latencyMs.p50 * 1000,
    raw(['--mode', 'lat', '--provider', 'shm', '--op', 'read', '--block', '4096'], 'p50Us'),
    'min',
  );
  const wall = Math.min(...m.kvf.points.map((p) => p.wallLatencyMs.p50 * 1000));
  const what = `same host 4 KiB READ latency p50 (path ${m.kvf.point.path}, shared pool ${pool})`;
  row(`${what}, addon post → completion, vs raw shm`, m, m.kvf.best, m.base.best, 'µs', m.kvf.best / m.base.best, '≤ 1.3', m.kvf.best / m.base.best <= 1.3, 1);
  row(`${what}, JS call → promise settled, vs raw shm`, m, wall, m.base.best, 'µs', wall / m.base.best, '≤ 1.3', wall / m.base.best <= 1.3, 1);
}
// Where 2 MiB pages are reserved (EFA nodes reserve them; the EKS manifests give pods 5 GiB and KVF_HUGEPAGES),
// pools allocated with hugepages are shared by default (allocate's 'auto'), so the same-host default is the
// mapped path. Both pools need 256 MiB of reserved pages.
const freeHugepages = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
if (freeHugepages >= 2 * 128) {
  const lat = sideBySide(
    ['--provider', 'shm', '--latency', '--fast-path', 'on', '--hugepages'],
    (p) => p.latencyMs.p50 * 1000,
    raw(['--mode', 'lat', '--provider', 'shm', '--op', 'read', '--block', '4096'], 'p50Us'),
    'min',
  );
  const wall = Math.min(...lat.kvf.points.map((p) => p.wallLatencyMs.p50 * 1000));
  const what = `same host 4 KiB READ latency p50 (path ${lat.kvf.point.path}, reserved hugepages, shared pool auto)`;
  row(
    `${what}, addon post → completion, vs raw shm`,
    lat,
    lat.kvf.best,
    lat.base.best,
    'µs',
    lat.kvf.best / lat.base.best,
    '≤ 1.3',
    lat.kvf.best / lat.base.best <= 1.3,
    1,
  );
  row(`${what}, JS call → promise settled, vs raw shm`, lat, wall, lat.base.best, 'µs', wall / lat.base.best, '≤ 1.3', wall / lat.base.best <= 1.3, 1);
  const bw = sideBySide(
    ['--provider', 'shm', '--op', 'READ', ...mib, '--fast-path', 'on', '--hugepages'],
    (p) => p.gbps,
    { program: 'memcpy_bench', args: ['--size', String(256 << 20), '--duration', duration], metric: 'gbps' },
    'max',
  );
  row(
    `same host READ 1 MiB (path ${bw.kvf.point.path}, reserved hugepages, shared pool auto) vs single-thread memcpy`,
    bw,
    bw.kvf.best,
    bw.base.best,
    'GB/s',
    bw.kvf.best / bw.base.best,
    '≥ 0.6',
    bw.kvf.best / bw.base.best >= 0.6,
  );
} else {
  console.error(`reserved-hugepage rows not run: ${freeHugepages} free 2 MiB pages, 256 needed (sysctl vm.nr_hugepages=600)`);
}
{
  // Large same-host copies through the mapping (shared pools, 4 KiB pages where the kernel gives shared memory
  // no hugepages) against memcpy, for reference beside the cma row above.
  const m = sideBySide(
    ['--provider', 'shm', '--op', 'READ', ...mib, '--fast-path', 'on', '--shared-pool', 'on'],
    (p) => p.gbps,
    { program: 'memcpy_bench', args: ['--size', String(256 << 20), '--duration', duration], metric: 'gbps' },
    'max',
  );
  row(
    `same host READ 1 MiB (path ${m.kvf.point.path}, shared pool on) vs single-thread memcpy (for reference)`,
    m,
    m.kvf.best,
    m.base.best,
    'GB/s',
    m.kvf.best / m.base.best,
    '—',
    true,
  );
}

console.log(`\nkvfabric vs peers, best of ${repeat}, ${describeMachine().cpu} × ${describeMachine().cores} cores, libfabric ${describeMachine().libfabric}`);
console.log('| criterion | kvfabric | baseline | ratio | target | |');
console.log('|---|---|---|---|---|---|');
for (const r of rows)
  console.log(`| ${r.criterion} | ${r.kvfabric} | ${r.baseline} | ${f(r.ratio)} | ${r.target} | ${r.target === '—' ? '' : r.pass ? 'pass' : '**fail**'} |`);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify({ date: new Date().toISOString(), machine: describeMachine(), repeat, duration, peersDate: peers.date, rows }, null, 2),
);
console.log(`\nwrote ${values.out}`);
