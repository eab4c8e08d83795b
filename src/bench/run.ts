// `kvfabric bench`: the initiator's whole run (target, agent, idle baseline, every point, table, JSON, chart),
// or the target's when --target is given.
import { openAgent } from './agent.js';
import { loadChartWriter, type ChartWriter } from './chart.js';
import { describeMachine } from './machine.js';
import { batchFor, formatSize, parseBenchOptions, parseTargetOptions, type BenchOptions, type RawBenchOptions } from './options.js';
import { openTarget } from './peer.js';
import { Layout, runPoint, type PointResult } from './point.js';
import { createProgress, pointLabel } from './progress.js';
import { renderTable, writeJson, type BenchResult } from './report.js';
import { idleLoopDelay } from './stats.js';
import { runTarget } from './target.js';
import type { Agent } from '../fabric/agent.js';
import { KvfError } from '../common/errors.js';

export async function runBenchCommand(raw: RawBenchOptions): Promise<void> {
  if (raw.target) {
    await runTarget(parseTargetOptions(raw));
    return;
  }
  const options = parseBenchOptions(raw);
  // The chart libraries are loaded before measuring, so that a missing one fails now, not after the run.
  const result = await runBench(options, options.chart ? await loadChartWriter(options.chart) : undefined);
  console.log(renderTable(result));
}

export async function runBench(options: BenchOptions, chart?: ChartWriter): Promise<BenchResult> {
  const target = await openTarget(options);
  let agent: Agent | undefined;
  let result: BenchResult;
  try {
    agent = await openAgent('initiator', options);
    result = await measure(agent, options, target.hello, target.where);
  } finally {
    await agent?.close();
    await target.done();
  }
  if (options.json) writeJson(options.json, result);
  if (chart) await chart(result);
  return result;
}

async function measure(agent: Agent, options: BenchOptions, hello: Awaited<ReturnType<typeof openTarget>>['hello'], where: string): Promise<BenchResult> {
  const span = Math.min(options.pool, hello.poolBytes);
  for (const block of options.blockSizes) {
    const b = batchFor(options, block);
    if (b * block > span) {
      throw new KvfError(
        'KVF_ERR_INVALID_ARGUMENT',
        `bench: the target's pool (${formatSize(hello.poolBytes)}) is smaller than one batch of ${b} × ${formatSize(block)} blocks`,
      );
    }
  }
  const local = agent.allocate(options.pool, { shared: options.sharedPool, hugepages: options.hugepages });
  local.bytes.fill(1); // fault every page in before anything is timed
  const peer = agent.loadRemoteMetadata(Buffer.from(hello.metadata, 'base64'));
  await agent.warmup(peer);

  // The baseline: the same loop with the agent open and idle, for as long as a point (at most a second).
  const idle = await idleLoopDelay(Math.min(1000, options.duration * 1000));

  const total = options.blockSizes.length * options.ops.length;
  const progress = await createProgress(options.progress, total);
  const points: PointResult[] = [];
  try {
    for (const block of options.blockSizes) {
      const batch = batchFor(options, block);
      const layout = new Layout(agent, peer, local, hello.region, span, block, batch, options.prepared);
      try {
        for (const op of options.ops) {
          const index = points.length;
          const label = pointLabel(op, block, batch);
          progress.update(index, 0, label, 0);
          points.push(
            await runPoint(layout, { op, depth: options.depth, duration: options.duration, iters: options.iters }, (fraction, gbps) =>
              progress.update(index, fraction, label, gbps),
            ),
          );
        }
      } finally {
        layout.release();
      }
    }
  } finally {
    progress.stop();
  }
  return {
    benchmark: 'kvfabric-bench',
    version: 1,
    date: new Date().toISOString(),
    provider: agent.provider,
    rails: agent.rails,
    target: where,
    machine: describeMachine(),
    targetMachine: hello.machine,
    options: { ...options, connect: where === 'fork' ? undefined : where },
    idleLoopDelay: idle,
    points,
  };
}
