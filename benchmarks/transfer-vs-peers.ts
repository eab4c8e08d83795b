// Issue 5's acceptance ratios, measured side by side in one run: the peers (benchmarks/peers/run.ts: raw
// libfabric, ucx_perftest, memcpy, …) and then kvfabric (`kvfabric bench`) on the same cases, best of N each,
// on the same machine minutes apart. Prints the ratio table and writes benchmarks/out/transfer-vs-peers.json.
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

if (!values['skip-peers']) {
  run('bash', [join(here, 'peers', 'build.sh')]);
  run(process.execPath, ['--import', 'tsx', join(here, 'peers', 'run.ts'), '--repeat', String(repeat), '--duration', duration, '--only', 'raw,memcpy,ucx']);
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

/** Best of `repeat` runs of one kvfabric bench case; `pick` chooses the figure and `better` its direction. */
function kvf(args: string[], pick: (p: Point) => number, better: 'max' | 'min'): { best: number; runs: number[]; point: Point; points: Point[]; command: string } {
  const runs: { v: number; p: Point }[] = [];
  const json = join(tmpdir(), `kvf-bench-${process.pid}.json`);
  const full = ['bench', ...args, '--duration', duration, '--no-progress', '--json', json];
  for (let i = 0; i < repeat; i++) {
    run(process.execPath, [join(root, 'dist', 'cli', 'main.js'), ...full]);
    const p = (JSON.parse(readFileSync(json, 'utf8')) as { points: Point[] }).points[0]!;
    runs.push({ v: pick(p), p });
  }
  runs.sort((a, b) => (better === 'max' ? b.v - a.v : a.v - b.v));
  return { best: runs[0]!.v, runs: runs.map((r) => r.v), point: runs[0]!.p, points: runs.map((r) => r.p), command: `kvfabric ${full.slice(0, -2).join(' ')}` };
}

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}`);
}

const fabric = ['--fast-path', 'off'];
const mib = ['--block-sizes', '1M', '--pool', '256M', '--depth', '4', '--batch', '16'];
const rows: { criterion: string; kvfabric: string; baseline: string; ratio: number; target: string; pass: boolean; command: string }[] = [];
const f = (x: number, d = 2) => x.toFixed(d);

for (const op of ['WRITE', 'READ'] as const) {
  const k = kvf(['--provider', 'tcp', '--op', op, ...mib, ...fabric], (p) => p.gbps, 'max');
  const raw = peer(`raw tcp ${op} 1 MiB d64`);
  rows.push({ criterion: `tcp ${op} 1 MiB, 256 MiB pool, 1 rail vs raw libfabric`, kvfabric: `${f(k.best)} GB/s`, baseline: `${f(raw)} GB/s`, ratio: k.best / raw, target: '≥ 0.95', pass: k.best / raw >= 0.95, command: k.command });
}
{
  const k = kvf(['--provider', 'tcp', '--op', 'WRITE', '--rails', '4', ...mib, ...fabric], (p) => p.gbps, 'max');
  const ucx = peer('ucx_perftest ucp_put_bw tcp 1 MiB');
  rows.push({ criterion: 'tcp WRITE 1 MiB, 4 rails vs ucx_perftest put bw (tcp)', kvfabric: `${f(k.best)} GB/s`, baseline: `${f(ucx)} GB/s`, ratio: k.best / ucx, target: '≥ 2', pass: k.best / ucx >= 2, command: k.command });
}
{
  const k = kvf(['--provider', 'shm', '--op', 'READ', ...mib, '--fast-path', 'on'], (p) => p.gbps, 'max');
  const memcpy = peer('memcpy 256 MiB, 1 thread');
  const shm = peer('raw shm READ 1 MiB d64');
  rows.push({ criterion: `same host READ 1 MiB (path ${k.point.path}) vs single-thread memcpy`, kvfabric: `${f(k.best)} GB/s`, baseline: `${f(memcpy)} GB/s`, ratio: k.best / memcpy, target: '≥ 0.6', pass: k.best / memcpy >= 0.6, command: k.command });
  rows.push({ criterion: `same host READ 1 MiB (path ${k.point.path}) vs the shm provider (raw)`, kvfabric: `${f(k.best)} GB/s`, baseline: `${f(shm)} GB/s`, ratio: k.best / shm, target: '≥ 4', pass: k.best / shm >= 4, command: k.command });
}
for (const provider of ['tcp', 'shm']) {
  const k = kvf(['--provider', provider, '--op', 'WRITE', '--block-sizes', '4K', '--batch', '1024', '--depth', '1', '--pool', '256M', ...fabric], (p) => p.costUsPerDesc, 'min');
  const raw = peer(`raw ${provider} WRITE posting 1024 x 4 KiB`) / 1000;
  rows.push({ criterion: `${provider} posting, prepared list, 1024 × 4 KiB WRITE: cost per descriptor − raw`, kvfabric: `${f(k.best, 3)} µs`, baseline: `${f(raw, 3)} µs`, ratio: k.best - raw, target: '≤ +0.3 µs', pass: k.best - raw <= 0.3, command: k.command });
}
// Latency, measured two ways in the same runs (`kvfabric bench --latency`: busy polling on both sides, as the
// raw program spins on both): the addon's own post → completion time, which is what the raw program times,
// and JS call → promise settled, which adds Node's call and promise machinery on top.
for (const provider of ['tcp', 'shm']) {
  const raw = peer(`raw ${provider} READ 4 KiB latency (d1)`);
  const addon = kvf(['--provider', provider, '--latency', ...fabric], (p) => p.latencyMs.p50 * 1000, 'min');
  rows.push({ criterion: `${provider} 4 KiB READ latency p50, addon post → completion (as raw times it)`, kvfabric: `${f(addon.best, 1)} µs`, baseline: `${f(raw, 1)} µs`, ratio: addon.best / raw, target: '≤ 1.3', pass: addon.best / raw <= 1.3, command: addon.command });
  const wall = Math.min(...addon.points.map((p) => p.wallLatencyMs.p50 * 1000));
  rows.push({ criterion: `${provider} 4 KiB READ latency p50, JS call → promise settled`, kvfabric: `${f(wall, 1)} µs`, baseline: `${f(raw, 1)} µs`, ratio: wall / raw, target: '≤ 1.3', pass: wall / raw <= 1.3, command: addon.command });
}

console.log(`\nkvfabric vs peers, best of ${repeat}, ${describeMachine().cpu} × ${describeMachine().cores} cores, libfabric ${describeMachine().libfabric}`);
console.log('| criterion | kvfabric | baseline | ratio | target | |');
console.log('|---|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.criterion} | ${r.kvfabric} | ${r.baseline} | ${f(r.ratio)} | ${r.target} | ${r.pass ? 'pass' : '**fail**'} |`);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, JSON.stringify({ date: new Date().toISOString(), machine: describeMachine(), repeat, duration, peersDate: peers.date, rows }, null, 2));
console.log(`\nwrote ${values.out}`);
