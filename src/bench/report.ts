// The results of `kvfabric bench`: one object for the JSON file and the chart, and a markdown table (the
// format of benchmarks/RESULTS.md) for stdout.
import { writeFileSync } from 'node:fs';

import type { MachineDescription } from './machine.js';
import { formatSize, type BenchOptions } from './options.js';
import type { PointResult } from './point.js';
import type { LoopDelay } from './stats.js';

export interface BenchResult {
  benchmark: 'kvfabric-bench';
  version: 1;
  date: string;
  provider: string;
  /** Rails the initiator opened (each point lists those that carried it). */
  rails: number;
  /** 'fork' (a child process on this host) or the host:port of a standalone target. */
  target: string;
  machine: MachineDescription;
  targetMachine: MachineDescription;
  options: Omit<BenchOptions, 'connect'> & { connect: string | undefined };
  /** Event-loop delay with the agent open and nothing moving, measured once before the points. */
  idleLoopDelay: LoopDelay;
  points: PointResult[];
}

const ms = (v: number) => (v >= 100 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3));
const us = (v: number) => (v >= 100 ? v.toFixed(0) : v.toFixed(2));

function count(v: number): string {
  if (v >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return v.toFixed(0);
}

export function renderTable(result: BenchResult): string {
  const o = result.options;
  const lines = [
    `kvfabric bench: provider ${result.provider}, ${result.rails} rail(s), target ${result.target === 'fork' ? 'child process (same host)' : result.target}, ` +
      `pool ${formatSize(o.pool)}, ${o.iters !== undefined ? `${o.iters} transfers` : `${o.duration} s`} per point, ` +
      `${o.prepared ? 'prepared lists' : 'descriptors validated per transfer'}, fast path ${o.fastPath === undefined ? 'default' : o.fastPath ? 'on' : 'off'}, shared pool ${o.sharedPool === 'auto' ? 'auto' : o.sharedPool ? 'on' : 'off'}, ${o.hugepages ? 'hugepages, ' : ''}` +
      `busy poll ${o.busyPollUs} µs, express lane ${o.expressMaxBytes === undefined ? 'default' : o.expressMaxBytes === 0 ? 'off' : `≤ ${formatSize(o.expressMaxBytes)}`}`,
    `idle event-loop delay: p50 ${ms(result.idleLoopDelay.p50Ms)} ms, p99 ${ms(result.idleLoopDelay.p99Ms)} ms, max ${ms(result.idleLoopDelay.maxMs)} ms`,
    '',
  ];
  const head = [
    'op',
    'path',
    'block',
    'batch',
    'depth',
    'rails',
    'GB/s',
    'ops/s',
    'lat p50 ms',
    'lat p99 ms',
    'post cost µs/desc',
    'JS µs/desc',
    'loop p50 ms',
    'loop p99 ms',
    'loop max ms',
  ];
  const rows = result.points.map((p) => [
    p.op,
    p.path,
    formatSize(p.blockBytes),
    String(p.batch),
    String(p.depth),
    p.rails > 0 ? String(p.rails) : '-', // the same-host path uses no rail
    p.gbps.toFixed(3),
    count(p.opsPerSec),
    ms(p.latencyMs.p50),
    ms(p.latencyMs.p99),
    us(p.costUsPerDesc),
    us(p.jsUsPerDesc),
    ms(p.loopDelay.p50Ms),
    ms(p.loopDelay.p99Ms),
    ms(p.loopDelay.maxMs),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (i < 3 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ')} |`;
  lines.push(line(head));
  lines.push(`|${widths.map((w, i) => (i < 3 ? '-'.repeat(w + 2) : `${'-'.repeat(w + 1)}:`)).join('|')}|`);
  for (const r of rows) lines.push(line(r));
  lines.push(
    '',
    'GB/s are decimal (bytes / 1e9 / s); ops/s are blocks (descriptors) per second; latency is per transfer of `batch` blocks;',
    "post cost = the JS post() call plus the time inside the provider's post calls, per descriptor (JSON: costUsPerDesc).",
  );
  return lines.join('\n');
}

export function writeJson(file: string, result: BenchResult): void {
  // Options not given are undefined; write them as null so every key is there for whoever reads the file.
  writeFileSync(file, `${JSON.stringify(result, (_key, value: unknown) => (value === undefined ? null : value), 2)}\n`);
}
