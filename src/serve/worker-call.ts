// What a worker's RPC handlers (worker-prefill.ts, worker-decode.ts) share: the worker's parts they use, and
// what they read off a gRPC call (its cancellation as an AbortSignal, its deadline, its sampling settings).
import type { ReferenceEngine } from '../engine/engine.js';
import type { SamplingOptions } from '../engine/sampling.js';
import type { Logger } from '../common/logger.js';
import type { grpc, Sampling } from './rpc.js';
import type { HandOffGate } from './security/hand-off.js';
import type { HandleSigner } from './security/handles.js';
import type { WorkQueue } from './work-queue.js';
import type { WorkerKv } from './worker-kv.js';

/** The parts of a worker its handlers run on. */
export interface WorkerParts {
  readonly id: string;
  readonly log: Logger;
  readonly engine: ReferenceEngine;
  /** Admission: prompt tokens queued and decode streams (work-queue.ts). */
  readonly work: WorkQueue;
  readonly kv: WorkerKv;
  readonly signer: HandleSigner;
  readonly handOffs: HandOffGate;
}

/**
 * Aborted when the call is cancelled (the caller's deadline passed, or it went away): the engine then drops the
 * call's queued forward passes and stops a running one at its next layer, so no work outlives its request.
 */
export function whileCalled(call: { cancelled: boolean; once(event: 'cancelled', listener: () => void): unknown }): AbortSignal {
  const ac = new AbortController();
  if (call.cancelled) ac.abort();
  else call.once('cancelled', () => ac.abort());
  return ac.signal;
}

/** A call's deadline in ms since the epoch (Infinity when the caller set none). */
export function deadlineOf(call: { getDeadline(): grpc.Deadline }): number {
  const d = call.getDeadline();
  return d instanceof Date ? d.getTime() : d;
}

export function samplingOptions(s: Sampling | null): SamplingOptions {
  if (!s) return {};
  return { temperature: s.temperature, topK: s.topK, topP: s.topP || 1, seed: s.seed };
}
