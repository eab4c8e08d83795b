// `kvfabric bench`: the initiator's whole run (target, agent, idle baseline, every point, table, JSON, chart),
// or the target's when --target is given.
import { openAgent } from './agent.js';
import { loadChartWriter, type ChartWriter } from './chart.js';
import { describeMachine } from './machine.js';
import { batchFor, formatSize, parseBenchOptions, parseTargetOptions, type BenchOptions, type RawBenchOptions } from './options.js';
import { openTarget, type TargetHandle } from './peer.js';
import { allocatePool } from './pool.js';
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
    result = await measure(agent, options, target);
  } finally {
    await agent?.close();
    await target.done();
  }
  if (options.json) writeJson(options.json, result);
  if (chart) await chart(result);
  return result;
}

async function measure(agent: Agent, options: BenchOptions, target: TargetHandle): Promise<BenchResult> {
  const { hello, where, introduce } = target;
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
  const local = allocatePool(agent, { ...options, device: options.device.initiator }, 1);
  const peer = agent.loadRemoteMetadata(Buffer.from(hello.metadata, 'base64'));
  // A target staging device memory answers this agent on the notification channel: it needs our metadata.
  if (options.device.target === 'host') await agent.warmup(peer);
  else {
    await introduce(agent.getLocalMetadata().toString('base64'));
    // warmup() reads host regions; a device pool is warmed (rails connected, staging chunks made) by one small READ.
    await agent.read(peer, [{ local, localOffset: 0, remote: hello.region, remoteOffset: 0, length: 4096 }], { timeoutMs: 60_000 });
  }

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
