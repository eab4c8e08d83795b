// GPU paths beside their physical limits, in one run (issue 15's benchmark): cuda-ipc GPU→GPU against a
// device-to-device copy inside one process; the staged path GPU→GPU against the same host→host path (tcp with 4
// rails, shm; 1 MiB blocks); 4 KiB GPU→GPU READ latency over cuda-ipc and staged. Each row is a `kvfabric bench`
// run (its own processes), the baseline measured in the same run. Prints a table and writes JSON.
//
//   node --import tsx benchmarks/gpu.ts [--out benchmarks/out/gpu.json] [--duration 2]
//   (GPU machine without npm: scripts/gpu-pack.sh, then bash scripts/gpu-run.sh bench)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

import { DeviceBuffer, cudaStatus } from '../src/index.js';
import { gpuAddon } from '../src/fabric/gpu-native.js';

const { values } = parseArgs({ options: { out: { type: 'string', default: 'benchmarks/out/gpu.json' }, duration: { type: 'string', default: '2' } } });
const status = cudaStatus();
if (!status.available) {
  console.error(`benchmarks/gpu.ts needs a GPU: ${status.reason}`);
  process.exit(2);
}
const card = status.devices[0]!.name;

/** `kvfabric bench` with these arguments; its JSON result. KVF_CLI names a bundled CLI (the GPU machine's). */
function bench(args: string[]): { points: { op: string; path: string; blockBytes: number; gbps: number; latencyMs: { p50: number; p99: number } }[] } {
  const json = join(tmpdir(), `kvfabric-bench-${process.pid}-${Math.random().toString(36).slice(2)}.json`);
  const cli = process.env.KVF_CLI;
  const argv = cli ? [cli] : ['--import', 'tsx', 'src/cli/main.ts'];
  execFileSync(process.execPath, [...argv, 'bench', ...args, '--duration', values.duration, '--no-progress', '--json', json], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return JSON.parse(readFileSync(json, 'utf8'));
}

/** A device-to-device copy between two buffers of one process, `bytes` at a time (each one finished before the next), GB/s. */
function deviceCopyGbps(bytes: number): number {
  const a = DeviceBuffer.allocate('cuda:0', bytes);
  const b = DeviceBuffer.allocate('cuda:0', bytes);
  try {
    for (let i = 0; i < 3; i++) gpuAddon.cudaCopyDeviceToDevice(b.ptr, a.ptr, bytes);
    const n = Math.max(10, Math.ceil(4e9 / bytes));
    const t = performance.now();
    for (let i = 0; i < n; i++) gpuAddon.cudaCopyDeviceToDevice(b.ptr, a.ptr, bytes);
    return (n * bytes) / ((performance.now() - t) * 1e6);
  } finally {
    a.free();
    b.free();
  }
}

interface Row {
  what: string;
  op: string;
  measured: number;
  baseline: number;
  unit: string;
  ratio: number;
  path: string;
}
const rows: Row[] = [];
mkdirSync(dirname(values.out), { recursive: true });

// cuda-ipc against an in-process device copy (both on the same card).
for (const block of [8 << 20, 64 << 20]) {
  const base = deviceCopyGbps(block);
  const r = bench([
    '--provider',
    'tcp',
    '--device',
    'cuda:0',
    '--fast-path',
    'on',
    '--block-sizes',
    String(block),
    '--batch',
    '1',
    '--pool',
    String(4 * block),
  ]);
  for (const p of r.points)
    rows.push({
      what: `cuda-ipc ${block >> 20} MiB vs D2D copy`,
      op: p.op,
      measured: p.gbps,
      baseline: base,
      unit: 'GB/s',
      ratio: p.gbps / base,
      path: p.path,
    });
}

// staged GPU→GPU against host→host over the same provider.
for (const [label, provider, rails] of [
  ['tcp 4 rails', 'tcp', '4'],
  ['shm', 'shm', '1'],
] as const) {
  const common = ['--provider', provider, '--rails', rails, '--fast-path', 'off', '--block-sizes', '1M', '--pool', '256M'];
  const host = bench([...common, '--device', 'host']);
  const gpu = bench([...common, '--device', 'cuda:0']);
  for (const p of gpu.points) {
    const base = host.points.find((h) => h.op === p.op)!.gbps;
    rows.push({
      what: `staged GPU→GPU ${label}, 1 MiB vs host→host`,
      op: p.op,
      measured: p.gbps,
      baseline: base,
      unit: 'GB/s',
      ratio: p.gbps / base,
      path: p.path,
    });
  }
}

// 4 KiB READ latency, GPU→GPU, beside host→host on the same path.
for (const [label, fastPath] of [
  ['cuda-ipc', 'on'],
  ['staged tcp', 'off'],
] as const) {
  const common = ['--provider', 'tcp', '--latency', '--fast-path', fastPath, '--pool', '16M'];
  const gpu = bench([...common, '--device', 'cuda:0']).points[0]!;
  const host = bench([...common, '--device', 'host']).points[0]!;
  for (const q of ['p50', 'p99'] as const) {
    const us = gpu.latencyMs[q] * 1000;
    const base = host.latencyMs[q] * 1000;
    rows.push({ what: `4 KiB READ latency ${label} ${q} vs host`, op: 'READ', measured: us, baseline: base, unit: 'µs', ratio: us / base, path: gpu.path });
  }
}

console.log(`GPU paths on ${card} (driver ${status.driverVersion})`);
console.table(rows.map((r) => ({ ...r, measured: +r.measured.toFixed(2), baseline: +r.baseline.toFixed(2), ratio: +r.ratio.toFixed(3) })));
writeFileSync(values.out, JSON.stringify({ benchmark: 'kvfabric-gpu', date: new Date().toISOString(), card, driver: status.driverVersion, rows }, null, 2));
