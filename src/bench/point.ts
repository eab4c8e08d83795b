// One measured point of `kvfabric bench`: a block size and op, `depth` transfers of `batch` blocks kept in
// flight for a duration (or a number of transfers), each new transfer on the next slot of the pool so the
// working set cycles through all of it (larger than the CPU caches by default).
import { performance } from 'node:perf_hooks';

import type { Agent, TransferOp, TransferReport } from '../fabric/agent.js';
import type { TransferDescriptor } from '../fabric/descriptors.js';
import type { DeviceRegion } from '../fabric/device-region.js';
import type { MemoryRegion } from '../fabric/memory.js';
import type { RemotePeer } from '../fabric/peer.js';
import type { PreparedTransfer } from '../fabric/prepared.js';
import { LoopDelayMonitor, percentile, type LoopDelay } from './stats.js';

export interface PointResult {
  op: TransferOp;
  /** 'fabric', 'cma' or 'mapped' (the same-host fast path); joined with '+' if transfers of the point went several ways. */
  path: string;
  blockBytes: number;
  batch: number;
  depth: number;
  /** Rails that carried the point's transfers. */
  rails: number;
  prepared: boolean;
  transfers: number;
  descriptors: number;
  bytes: number;
  seconds: number;
  /** Decimal: bytes / 1e9 / seconds. */
  gbps: number;
  /** Descriptors (blocks) per second. */
  opsPerSec: number;
  transfersPerSec: number;
  /** Per transfer, as the addon timed it (post to last completion). */
  latencyMs: { p50: number; p99: number; mean: number };
  /** Per transfer, from the JS call to the promise resolving (adds the hand-over to the event loop). */
  wallLatencyMs: { p50: number; p99: number };
  /** From the post call until the provider had accepted every op (report.postMs), per descriptor: queueing included. */
  postUsPerDesc: number;
  /** Time inside the provider's post calls (report.providerPostMs), per descriptor. */
  providerUsPerDesc: number;
  /**
   * The posting cost: CPU time of the JS post() call plus the provider's post calls, per descriptor. This is
   * what to hold against a raw-libfabric program's time in fi_write/fi_read.
   */
  costUsPerDesc: number;
  /** Time spent inside the post()/transfer() call in JS, per descriptor. */
  jsUsPerDesc: number;
  /** libfabric operations per transfer after merging, striping and splitting. */
  fabricOpsPerTransfer: number;
  loopDelay: LoopDelay;
}

/** The transfers of one block size: slot s moves blocks s·batch … s·batch+batch-1. */
export class Layout {
  readonly slots: number;
  readonly #list: PreparedTransfer | undefined;
  readonly #indices: Uint32Array[] = [];
  readonly #descs: TransferDescriptor[][] = [];

  constructor(
    readonly agent: Agent,
    readonly peer: RemotePeer,
    local: MemoryRegion | DeviceRegion,
    remoteRegion: number,
    span: number,
    readonly block: number,
    readonly batch: number,
    readonly prepared: boolean,
  ) {
    this.slots = Math.floor(Math.floor(span / block) / batch);
    const count = this.slots * batch;
    // Remote blocks in the reverse order of the local ones: neighbours are never contiguous on both sides,
    // so the addon cannot merge a batch of 4 KiB blocks into one large operation (KV blocks are scattered).
    const all: TransferDescriptor[] = [];
    for (let i = 0; i < count; i++) {
      all.push({ local, localOffset: i * block, remote: remoteRegion, remoteOffset: (count - 1 - i) * block, length: block });
    }
    if (prepared) {
      this.#list = agent.prepare(peer, all);
      const ids = Uint32Array.from({ length: count }, (_, i) => i);
      for (let s = 0; s < this.slots; s++) this.#indices.push(ids.subarray(s * batch, (s + 1) * batch));
    } else {
      for (let s = 0; s < this.slots; s++) this.#descs.push(all.slice(s * batch, (s + 1) * batch));
    }
  }

  post(op: TransferOp, slot: number): Promise<TransferReport> {
    const s = slot % this.slots;
    return this.#list ? this.agent.post(op, this.#list, { indices: this.#indices[s]! }) : this.agent.transfer(op, this.peer, this.#descs[s]!);
  }

  release(): void {
    this.#list?.release();
  }
}

export interface PointSpec {
  op: TransferOp;
  depth: number;
  /** Seconds; used when iters is undefined. */
  duration: number;
  iters: number | undefined;
}

/** Keeps up to `depth` transfers in flight until `shouldPost` says stop; resolves when all have completed. */
function pump(
  layout: Layout,
  op: TransferOp,
  depth: number,
  shouldPost: (posted: number) => boolean,
  onDone: (report: TransferReport, wallMs: number, jsMs: number) => void,
): Promise<void> {
  return new Promise((resolve, reject) => {
    let posted = 0;
    let inFlight = 0;
    let failed = false;
    const launch = (): void => {
      const t0 = performance.now();
      const p = layout.post(op, posted++);
      const jsMs = performance.now() - t0;
      inFlight++;
      p.then(
        (report) => {
          inFlight--;
          if (failed) return;
          onDone(report, performance.now() - t0, jsMs);
          if (shouldPost(posted)) launch();
          else if (inFlight === 0) resolve();
        },
        (err: unknown) => {
          inFlight--;
          if (!failed) reject(err);
          failed = true;
        },
      );
    };
    for (let i = 0; i < depth && shouldPost(posted); i++) launch();
    if (inFlight === 0) resolve();
  });
}

export async function runPoint(layout: Layout, spec: PointSpec, onProgress: (fraction: number, gbps: number) => void): Promise<PointResult> {
  // Warm-up: a few transfers on the same slots, so connections, page tables and caches of the provider are
  // in the state the timed transfers will find them in.
  const warm = Math.max(2, spec.depth);
  await pump(
    layout,
    spec.op,
    spec.depth,
    (n) => n < warm,
    () => {},
  );

  const latency: number[] = [];
  const wall: number[] = [];
  const rails = new Set<number>();
  const paths = new Set<string>();
  let descriptors = 0;
  let bytes = 0;
  let postMs = 0;
  let providerMs = 0;
  let jsMs = 0;
  let fabricOps = 0;
  const monitor = new LoopDelayMonitor();
  const durationMs = spec.duration * 1000;
  const start = performance.now();
  const deadline = start + durationMs;
  let lastProgress = 0;
  monitor.start();
  await pump(
    layout,
    spec.op,
    spec.depth,
    (posted) => (spec.iters !== undefined ? posted < spec.iters : performance.now() < deadline),
    (report, wallMs, callMs) => {
      latency.push(report.durationMs);
      wall.push(wallMs);
      for (const r of report.rails) rails.add(r);
      paths.add(report.path);
      descriptors += report.descriptors;
      bytes += report.bytes;
      postMs += report.postMs;
      providerMs += report.providerPostMs;
      jsMs += callMs;
      fabricOps += report.ops;
      const now = performance.now();
      if (now - lastProgress > 50) {
        lastProgress = now;
        const fraction = spec.iters !== undefined ? latency.length / spec.iters : (now - start) / durationMs;
        onProgress(Math.min(1, fraction), bytes / ((now - start) * 1e6));
      }
    },
  );
  const seconds = (performance.now() - start) / 1000;
  const loopDelay = monitor.stop();
  const transfers = latency.length;
  return {
    op: spec.op,
    path: [...paths].sort().join('+') || 'fabric',
    blockBytes: layout.block,
    batch: layout.batch,
    depth: spec.depth,
    rails: rails.size,
    prepared: layout.prepared,
    transfers,
    descriptors,
    bytes,
    seconds,
    gbps: bytes / 1e9 / seconds,
    opsPerSec: descriptors / seconds,
    transfersPerSec: transfers / seconds,
    latencyMs: { p50: percentile(latency, 50), p99: percentile(latency, 99), mean: latency.reduce((a, b) => a + b, 0) / Math.max(1, transfers) },
    wallLatencyMs: { p50: percentile(wall, 50), p99: percentile(wall, 99) },
    postUsPerDesc: descriptors > 0 ? (postMs * 1000) / descriptors : 0,
    providerUsPerDesc: descriptors > 0 ? (providerMs * 1000) / descriptors : 0,
    costUsPerDesc: descriptors > 0 ? ((jsMs + providerMs) * 1000) / descriptors : 0,
    jsUsPerDesc: descriptors > 0 ? (jsMs * 1000) / descriptors : 0,
    fabricOpsPerTransfer: transfers > 0 ? fabricOps / transfers : 0,
    loopDelay,
  };
}
