// One request through the disaggregated stack, as the frontend drives it:
//   pull (default): Prefill on a prefill worker → first token + KV handle; Decode on a decode worker, which
//                   pulls the blocks with RDMA READ and notifies the prefill worker, which frees them.
//   push:           Reserve on the decode worker; Prefill WRITEs the K/V into those blocks; Decode.
//   aggregated:     Decode alone; the decode worker prefills locally.
// A prefill that fails or times out turns into local prefill on the decode worker, and the proof says so.
// Blocks never leak: whatever ends the request (done, error, client gone, timeout), blocks held for it on
// either side are released here, and leases catch what a dead frontend leaves.
import { KvfError } from '../fabric/errors.js';
import type { Logger } from '../fabric/logger.js';
import type { ServeMode } from './config.js';
import { fromServiceError } from './grpc-errors.js';
import type { Router, WorkerEntry } from './router.js';
import { grpc, type DecodeEvent, type DecodeStarted, type KvHandle, type PrefillResponse, type Sampling, type WorkerClient } from './rpc.js';

export interface FlowRequest {
  requestId: string;
  prompt: number[];
  sampling: Sampling;
  maxTokens: number;
  endTokens: number[];
  /** Aborted by the client going away or the request timeout. */
  signal: AbortSignal;
}

/** What carried the request's KV: the `kvfabric` object of every response. */
export interface KvProof {
  mode: ServeMode | 'fallback';
  backend: string;
  provider: string;
  rails: number[];
  op: string | null;
  /** What carried the bytes: 'fabric' (the provider), 'cma' or 'mapped' (same-host fast path); null when none moved. */
  path: string | null;
  bytes: number;
  transfer_ms: number;
  prefill_worker: string | null;
  decode_worker: string;
  prefill_ms: number | null;
  fallback_reason: string | null;
}

export interface FlowOutcome {
  finishReason: 'stop' | 'length';
  completionTokens: number;
  proof: KvProof;
}

export interface FlowContext {
  router: Router;
  mode: ServeMode;
  prefillTimeoutMs: number;
  leaseMs: number;
  log: Logger;
}

/**
 * Runs a request; `onToken` gets each generated token in order and returns false to end generation there
 * (a stop sequence matched), which cancels the decode stream and finishes with reason 'stop'.
 */
export async function runFlow(ctx: FlowContext, req: FlowRequest, onToken: (token: number) => boolean): Promise<FlowOutcome> {
  const decode = ctx.router.pick('decode');
  let prefillEntry: WorkerEntry | undefined;
  let prefill: PrefillResponse | null = null;
  let reserved: KvHandle | null = null;
  let fallbackReason = '';
  let pulled = false;
  let prefillReleased = false;
  decode.active++;
  try {
    if (ctx.mode !== 'aggregated') {
      try {
        prefillEntry = ctx.router.pick('prefill');
      } catch (err) {
        fallbackReason = (err as Error).message;
      }
    }
    if (prefillEntry) {
      const entry = prefillEntry;
      entry.active++;
      try {
        if (ctx.mode === 'push') {
          reserved = await call(decode.client, 'reserve', { requestId: req.requestId, tokens: req.prompt.length, maxTokens: req.maxTokens, leaseMs: ctx.leaseMs }, ctx.prefillTimeoutMs, req.signal);
        }
        prefill = await call(
          entry.client,
          'prefill',
          { requestId: req.requestId, tokens: req.prompt, sampling: req.sampling, leaseMs: ctx.leaseMs, pushTo: reserved },
          ctx.prefillTimeoutMs,
          req.signal,
        );
      } catch (err) {
        if (req.signal.aborted) throw abortError(req.signal);
        const e = fromServiceError(err, `prefill worker ${entry.status?.workerId ?? entry.address}`);
        if (e.code === 'KVF_ERR_WORKER_FAILED' || e.code === 'KVF_ERR_TIMEOUT') ctx.router.markFailed(entry, e.message);
        fallbackReason = e.message;
        ctx.log.warn({ requestId: req.requestId, err: e.message }, 'prefill failed; the decode worker prefills locally');
      } finally {
        entry.active--;
      }
    }

    let completionTokens = 0;
    if (prefill) {
      if (req.endTokens.includes(prefill.firstToken)) return finish('stop', 0, null);
      completionTokens = 1;
      if (!onToken(prefill.firstToken)) return finish('stop', 1, null);
      if (req.maxTokens <= 1) return finish('length', 1, null);
    }

    let started: DecodeStarted | null = null;
    let stopped = false;
    let done: Extract<DecodeEvent, { event: 'done' }>['done'] | undefined;
    const stream = decode.client.decode({
      requestId: req.requestId,
      prompt: req.prompt,
      sampling: req.sampling,
      maxTokens: req.maxTokens,
      endTokens: req.endTokens,
      prefill,
      reserved: prefill ? reserved : null,
      fallbackReason,
    });
    const cancel = (): void => stream.cancel();
    req.signal.addEventListener('abort', cancel);
    try {
      for await (const ev of stream as AsyncIterable<DecodeEvent>) {
        if (ev.event === 'started') {
          started = ev.started;
          pulled = started.transfer?.op === 'READ';
          if (prefill?.kv && !pulled) releasePrefill();
          reserved = null; // the decode worker took its reservation over

        } else if (ev.event === 'token') {
          completionTokens++;
          if (!onToken(ev.token)) {
            stopped = true;
            stream.cancel();
            break;
          }
        } else if (ev.event === 'done') done = ev.done;
      }
    } catch (err) {
      if (req.signal.aborted) throw abortError(req.signal);
      const e = fromServiceError(err, `decode worker ${decode.status?.workerId ?? decode.address}`);
      if (e.code === 'KVF_ERR_WORKER_FAILED') ctx.router.markFailed(decode, e.message);
      throw e;
    } finally {
      req.signal.removeEventListener('abort', cancel);
    }
    if (req.signal.aborted) throw abortError(req.signal);
    if (stopped) return finish('stop', completionTokens, started);
    if (!started || !done) throw new KvfError('KVF_ERR_WORKER_FAILED', `decode worker ${decode.address} ended the stream without finishing`);
    return finish(done.finishReason, done.completionTokens, started);
  } finally {
    decode.active--;
    // Blocks nobody will take any more: the prefill worker's when no decode pulled them, the decode
    // worker's reservation when its Decode never ran.
    if (prefill?.kv && !pulled) releasePrefill();
    if (reserved) void release(decode.client, req.requestId);
  }

  function releasePrefill(): void {
    if (prefillReleased) return;
    prefillReleased = true;
    void release(prefillEntry!.client, req.requestId);
  }

  function finish(finishReason: 'stop' | 'length', completionTokens: number, started: DecodeStarted | null): FlowOutcome {
    const t = started?.transfer ?? prefill?.push ?? null;
    const local = started?.localPrefill ?? false;
    const reason = started?.fallbackReason || fallbackReason;
    return {
      finishReason,
      completionTokens,
      proof: {
        mode: local && ctx.mode !== 'aggregated' ? 'fallback' : ctx.mode,
        backend: t?.backend ?? decode.status?.backend ?? 'LIBFABRIC',
        provider: t?.provider ?? decode.status?.provider ?? '',
        rails: t?.rails ?? [],
        op: t?.op ?? null,
        path: t?.path ?? null,
        bytes: t?.bytes ?? 0,
        transfer_ms: t?.durationMs ?? 0,
        prefill_worker: local ? null : (prefill?.workerId ?? null),
        decode_worker: started?.workerId ?? decode.status?.workerId ?? decode.address,
        prefill_ms: local ? null : (prefill?.prefillMs ?? null),
        fallback_reason: reason || null,
      },
    };
  }
}

type UnaryName = 'prefill' | 'reserve' | 'release';
type Req<M extends UnaryName> = Parameters<WorkerClient[M]>[0];
type Res<M extends UnaryName> = NonNullable<Parameters<Parameters<WorkerClient[M]>[2]>[1]>;

/** A unary call with a deadline that the request's signal cancels. */
function call<M extends UnaryName>(client: WorkerClient, method: M, req: Req<M>, timeoutMs: number, signal: AbortSignal): Promise<Res<M>> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortError(signal));
    const fn = client[method] as unknown as (r: Req<M>, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Res<M>) => void) => grpc.ClientUnaryCall;
    const onAbort = (): void => c.cancel();
    const c = fn.call(client, req, { deadline: Date.now() + timeoutMs }, (err, res) => {
      signal.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(res!);
    });
    signal.addEventListener('abort', onAbort);
  });
}

function release(client: WorkerClient, requestId: string): Promise<unknown> {
  return call(client, 'release', { requestId }, 5000, new AbortController().signal).catch(() => undefined);
}

function abortError(signal: AbortSignal): KvfError {
  const reason = signal.reason as unknown;
  return reason instanceof KvfError ? reason : new KvfError('KVF_ERR_CLOSED', 'the client went away');
}
