// Event-loop delay while kvfabric moves 256 MiB, against the same loop left idle for as long.
// kvfabric posts and completes on its own rail threads and hands completions to JS in batches, so the
// loop should stay as responsive as when idle. Prints a table and writes JSON.
//
//   node --import tsx benchmarks/event-loop-delay.ts [--provider tcp|shm] [--size-mib 256] [--block-kib 1024] [--repeat 3]
import { fork } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

import { Agent, type TransferDescriptor } from '../src/index.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    provider: { type: 'string', default: 'tcp' },
    'size-mib': { type: 'string', default: '256' },
    'block-kib': { type: 'string', default: '1024' },
    repeat: { type: 'string', default: '3' },
    out: { type: 'string', default: join(here, 'out', 'event-loop-delay.json') },
  },
});
const provider = values.provider!;
const size = Number(values['size-mib']) << 20;
const block = Number(values['block-kib']) << 10;
const repeat = Number(values.repeat);

interface Row {
  phase: string;
  op: string;
  ms: number;
  gbps: number;
  delayP50Ms: number;
  delayP99Ms: number;
  delayMaxMs: number;
}

async function measure(fn: () => Promise<void>): Promise<{ ms: number; p50: number; p99: number; max: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  const t0 = performance.now();
  await fn();
  const ms = performance.now() - t0;
  h.disable();
  return { ms, p50: h.percentile(50) / 1e6, p99: h.percentile(99) / 1e6, max: h.max / 1e6 };
}

const child = fork(join(here, 'lib', 'target.ts'), [provider, String(size)], { execArgv: ['--import', 'tsx'] });
const hello = await new Promise<{ metadata: string; region: number }>((resolve) => child.once('message', resolve as never));
const agent = await Agent.create({ name: 'bench-initiator', provider, logger: false, fastPath: false }); // measures the provider
const local = agent.allocate(size);
local.bytes.fill(1);
const peer = agent.loadRemoteMetadata(Buffer.from(hello.metadata, 'base64'));
const descriptors: TransferDescriptor[] = [];
for (let off = 0; off < size; off += block) {
  descriptors.push({ local, localOffset: off, remote: hello.region, remoteOffset: off, length: Math.min(block, size - off) });
}
await agent.write(peer, descriptors.slice(0, 4)); // connect before measuring

const rows: Row[] = [];
for (let i = 0; i < repeat; i++) {
  for (const op of ['WRITE', 'READ'] as const) {
    if (op === 'READ') local.bytes.fill(0);
    const busy = await measure(async () => {
      await agent.transfer(op, peer, descriptors);
    });
    // Baseline: the same loop, idle for as long, measured the same way in the same process.
    const idle = await measure(() => new Promise((r) => setTimeout(r, busy.ms)));
    rows.push({ phase: 'transfer', op, ms: busy.ms, gbps: size / (busy.ms * 1e6), delayP50Ms: busy.p50, delayP99Ms: busy.p99, delayMaxMs: busy.max });
    rows.push({ phase: 'idle', op, ms: idle.ms, gbps: 0, delayP50Ms: idle.p50, delayP99Ms: idle.p99, delayMaxMs: idle.max });
  }
}

// The last READ brought back the 1s our WRITEs put there: check, so a fast number is a true one.
if (!local.bytes.every((b) => b === 1)) throw new Error('read-back does not match what was written');

child.send({ cmd: 'exit' });
await agent.close();

const best = (phase: string, op: string, key: keyof Row) => Math.min(...rows.filter((r) => r.phase === phase && r.op === op).map((r) => r[key] as number));
const summary = (['WRITE', 'READ'] as const).map((op) => ({
  op,
  gbps: Math.max(...rows.filter((r) => r.phase === 'transfer' && r.op === op).map((r) => r.gbps)),
  transferP99Ms: best('transfer', op, 'delayP99Ms'),
  idleP99Ms: best('idle', op, 'delayP99Ms'),
  ratioP99: best('transfer', op, 'delayP99Ms') / best('idle', op, 'delayP99Ms'),
  transferMaxMs: best('transfer', op, 'delayMaxMs'),
}));

console.log(`event-loop delay during a ${size >> 20} MiB transfer (${block >> 10} KiB blocks, provider ${provider}, ${repeat} runs)`);
console.table(
  rows.map((r) => ({
    ...r,
    ms: +r.ms.toFixed(1),
    gbps: +r.gbps.toFixed(3),
    delayP50Ms: +r.delayP50Ms.toFixed(3),
    delayP99Ms: +r.delayP99Ms.toFixed(3),
    delayMaxMs: +r.delayMaxMs.toFixed(3),
  })),
);
console.table(
  summary.map((s) => ({
    ...s,
    gbps: +s.gbps.toFixed(3),
    transferP99Ms: +s.transferP99Ms.toFixed(3),
    idleP99Ms: +s.idleP99Ms.toFixed(3),
    ratioP99: +s.ratioP99.toFixed(2),
    transferMaxMs: +s.transferMaxMs.toFixed(3),
  })),
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify({ benchmark: 'event-loop-delay', provider, sizeBytes: size, blockBytes: block, machine: describeMachine(), rows, summary }, null, 2),
);
console.log(`wrote ${values.out}`);
