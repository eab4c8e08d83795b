// What each serving mode does before Decode, over shared steps:
//   aggregated: nothing — the decode worker prefills locally.
//   pull:       Prefill on a prefill worker, which holds the prompt's K/V for the decode worker to READ.
//   push:       Reserve blocks on the decode worker, then Prefill, which WRITEs the K/V into them. A Reserve
//               that fails is the decode worker's failure, not a prefill replica's: the request goes on as in
//               pull mode, and a decode worker that is really gone is then replaced by migration.
// A prefill worker that fails (or is overloaded) is replaced by another replica once; when none is left, or the
// prefill timed out (running it again elsewhere would double the wait), the decode worker prefills locally and
// the step says why.
import { KvfError } from '../common/errors.js';
import { ATTR, ROOT_CONTEXT, rpcAttributes, spanFailed, SpanKind, startSpan, withSpan, type Span } from '../common/tracing.js';
import type { ServeMode } from './config.js';
import type { FlowContext, FlowRequest } from './flow.js';
import { fromServiceError } from './grpc-errors.js';
import type { WorkerEntry } from './router.js';
import { unary, type KvHandle, type PrefillResponse } from './rpc.js';

/** Where the request stands when Decode begins. */
export interface PrefillStep {
  /** The prefill worker's answer; null when the decode worker prefills locally. */
  response: PrefillResponse | null;
  /** The prefill worker that answered (its blocks are released through it). */
  entry: WorkerEntry | undefined;
  /** Push mode: the decode worker's reservation, until its Decode takes it over (or a migration drops it). */
  reserved: KvHandle | null;
  /** Why the decode worker prefills locally ('' when it does not). */
  fallbackReason: string;
}

/** Failures that say the worker, not the request, is at fault: another worker may well succeed. */
export const WORKER_FAULTS = new Set(['KVF_ERR_WORKER_FAILED', 'KVF_ERR_CLOSED']);

type Steps = ReturnType<typeof stepsFor>;

const BEFORE_DECODE: Record<ServeMode, (s: Steps) => Promise<void>> = {
  aggregated: async () => {},
  pull: (s) => s.onReplicas((entry, attempt) => s.prefill(entry, null, attempt)),
  push: async (s) => {
    const pushTo = await s.reserve();
    await s.onReplicas((entry, attempt) => s.prefill(entry, pushTo, attempt));
  },
};

export function noPrefill(): PrefillStep {
  return { response: null, entry: undefined, reserved: null, fallbackReason: '' };
}

/**
 * Runs the request's mode's steps before Decode on `decode`, the decode worker it starts on, recording them in
 * `step` as they happen: when a later step throws, the caller still knows what an earlier one holds.
 */
export function prefillStep(ctx: FlowContext, req: FlowRequest, decode: WorkerEntry, step: PrefillStep, onRoute?: (reason: string) => void): Promise<void> {
  return BEFORE_DECODE[ctx.mode](stepsFor(ctx, req, decode, step, onRoute));
}

function stepsFor(ctx: FlowContext, req: FlowRequest, decode: WorkerEntry, step: PrefillStep, onRoute?: (reason: string) => void) {
  return {
    /** Push mode: blocks on the decode worker for the prompt's K/V, reserved once whatever the replica; null when refused. */
    async reserve(): Promise<KvHandle | null> {
      const span = workerSpan('reserve', 'Reserve', decode, req, { [ATTR.promptTokens]: req.prompt.length });
      try {
        step.reserved = await unary(
          decode.client,
          decode.client.reserve,
          { requestId: req.requestId, tokens: req.prompt.length, maxTokens: req.maxTokens, leaseMs: ctx.leaseMs, prompt: req.prompt },
          ctx.prefillTimeoutMs,
          req.signal,
          withSpan(req.trace ?? ROOT_CONTEXT, span),
        );
        span.setAttribute(ATTR.kvBlocks, step.reserved.blocks.length);
      } catch (err) {
        const e = req.signal.aborted ? abortError(req.signal) : fromServiceError(err, `decode worker ${decode.status?.workerId ?? decode.address}`);
        spanFailed(span, e);
        if (req.signal.aborted) throw e;
        span.setAttribute(ATTR.fallbackReason, 'reserve failed; the prompt goes by pull');
        ctx.log.warn({ requestId: req.requestId, err: e.message }, 'reserve failed; the prompt goes by pull');
      } finally {
        span.end();
      }
      return step.reserved;
    },
    async prefill(entry: WorkerEntry, pushTo: KvHandle | null, attempt: number): Promise<void> {
      const span = workerSpan('prefill', 'Prefill', entry, req, {
        [ATTR.promptTokens]: req.prompt.length,
        [ATTR.kvMode]: pushTo ? 'push' : 'pull',
        [ATTR.attempt]: attempt,
      });
      try {
        step.response = await unary(
          entry.client,
          entry.client.prefill,
          { requestId: req.requestId, tokens: req.prompt, sampling: req.sampling, leaseMs: ctx.leaseMs, pushTo },
          ctx.prefillTimeoutMs,
          req.signal,
          withSpan(req.trace ?? ROOT_CONTEXT, span),
        );
        span.setAttribute('kvfabric.prefill_ms', step.response.prefillMs);
      } catch (err) {
        spanFailed(span, req.signal.aborted ? abortError(req.signal) : fromServiceError(err, `prefill worker ${entry.status?.workerId ?? entry.address}`));
        throw err;
      } finally {
        span.end();
      }
    },
    onReplicas: (attempt: (entry: WorkerEntry, n: number) => Promise<void>) => onReplicas(ctx, req, step, attempt, onRoute),
  };
}

/**
 * Runs `attempt` on a prefill worker, on another replica once if the first fails or is overloaded; when that
 * fails too, records why local prefill follows. Overloaded everywhere: KVF_ERR_OVERLOADED for the client, since
 * prefilling on the decode worker would only move the overload there.
 */
async function onReplicas(
  ctx: FlowContext,
  req: FlowRequest,
  step: PrefillStep,
  attempt: (entry: WorkerEntry, n: number) => Promise<void>,
  onRoute?: (reason: string) => void,
): Promise<void> {
  let failed: string | undefined;
  let overloaded: KvfError | undefined;
  for (let n = 0; n < 2; n++) {
    let entry: WorkerEntry;
    try {
      const choice = ctx.router.choose('prefill', { prompt: req.prompt, ...(failed ? { exclude: failed } : {}), ...(req.trace ? { trace: req.trace } : {}) });
      entry = choice.entry;
      onRoute?.(choice.reason);
    } catch (err) {
      if (overloaded) throw overloaded;
      step.fallbackReason ||= (err as Error).message;
      return;
    }
    step.entry = entry;
    const blocks = ctx.router.promptBlocks(entry, req.prompt);
    entry.active++;
    entry.activeBlocks += blocks;
    try {
      await attempt(entry, n + 1);
      step.fallbackReason = '';
      return;
    } catch (err) {
      if (req.signal.aborted) throw abortError(req.signal);
      const e = fromServiceError(err, `prefill worker ${entry.status?.workerId ?? entry.address}`);
      const workerFault = WORKER_FAULTS.has(e.code);
      if (workerFault || e.code === 'KVF_ERR_TIMEOUT') ctx.router.markFailed(entry, e.message);
      ctx.log.warn({ requestId: req.requestId, err: e.message, retry: (workerFault || e.code === 'KVF_ERR_OVERLOADED') && n === 0 }, 'prefill failed');
      if (e.code === 'KVF_ERR_OVERLOADED') {
        if (n > 0) throw e;
        overloaded = e;
      } else {
        step.fallbackReason = e.message;
        if (!workerFault) return;
      }
      failed = entry.address;
    } finally {
      entry.active--;
      entry.activeBlocks -= blocks;
    }
  }
}

/** A Worker RPC of the request, as a CLIENT span under its trace (the worker's SERVER span becomes its child). */
export function workerSpan(
  name: string,
  method: string,
  entry: WorkerEntry,
  req: FlowRequest,
  attributes: Record<string, string | number | boolean> = {},
): Span {
  return startSpan(name, req.trace ?? ROOT_CONTEXT, SpanKind.CLIENT, () => ({
    ...rpcAttributes(method),
    'server.address': entry.address,
    [ATTR.workerId]: entry.status?.workerId ?? '',
    [ATTR.requestId]: req.requestId,
    ...attributes,
  }));
}

/** What a request cancelled by its signal fails with: the signal's KvfError (timeout), else the client going away. */
export function abortError(signal: AbortSignal): KvfError {
  const reason = signal.reason as unknown;
  return reason instanceof KvfError ? reason : new KvfError('KVF_ERR_CLOSED', 'the client went away');
}
