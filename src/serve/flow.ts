// One request through the disaggregated stack, as the frontend drives it:
//   pull (default): Prefill on a prefill worker → first token + KV handle; Decode on a decode worker, which
//                   pulls the blocks with RDMA READ and notifies the prefill worker, which frees them.
//   push:           Reserve on the decode worker; Prefill WRITEs the K/V into those blocks; Decode.
//   aggregated:     Decode alone; the decode worker prefills locally.
// A prefill worker that fails is replaced by another replica once; when none is left, or the prefill timed out
// (running it again elsewhere would double the wait), the decode worker prefills locally and the proof says so.
// A decode worker that fails mid-stream is replaced too (request migration): another one rebuilds the K/V of
// the prompt and the tokens the client already has, continues with the sampler's state, and the client's
// stream goes on.
// Blocks never leak: whatever ends the request (done, error, client gone, timeout), blocks held for it on
// either side are released here, and leases catch what a dead frontend leaves.
import { KvfError } from '../fabric/errors.js';
import type { Logger } from '../fabric/logger.js';
import type { ServeMode } from './config.js';
import { fromServiceError } from './grpc-errors.js';
import type { Router, WorkerEntry } from './router.js';
import {
  grpc,
  type DecodeDone,
  type DecodeEvent,
  type DecodeRequest,
  type DecodeStarted,
  type KvHandle,
  type PrefillResponse,
  type Sampling,
  type WorkerClient,
} from './rpc.js';

export interface FlowRequest {
  requestId: string;
  prompt: number[];
  sampling: Sampling;
  maxTokens: number;
  endTokens: number[];
  /** Aborted by the client going away or the request timeout. */
  signal: AbortSignal;
}

/** A decode worker that failed mid-stream, and how far it had got. */
export interface Migration {
  from: string;
  /** Tokens the client had when the request moved. */
  after_tokens: number;
  reason: string;
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
  /** Decode workers the request left (their K/V was rebuilt by the next one, not carried). */
  migrations: Migration[];
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
  /** Decode workers a request may move to after the one it started on fails. */
  maxMigrations: number;
  log: Logger;
}

/** Failures that say the worker, not the request, is at fault: another worker may well succeed. */
const WORKER_FAULTS = new Set(['KVF_ERR_WORKER_FAILED', 'KVF_ERR_CLOSED']);

/**
 * Runs a request; `onToken` gets each generated token in order and returns false to end generation there
 * (a stop sequence matched), which cancels the decode stream and finishes with reason 'stop'.
 */
export function runFlow(ctx: FlowContext, req: FlowRequest, onToken: (token: number) => boolean): Promise<FlowOutcome> {
  return new RequestFlow(ctx, req, onToken).run();
}

class RequestFlow {
  #decode: WorkerEntry;
  #prefillEntry: WorkerEntry | undefined;
  #prefill: PrefillResponse | null = null;
  /** Push mode: the decode worker's reservation until its Decode takes it over. */
  #reserved: KvHandle | null = null;
  #fallbackReason = '';
  #prefillReleased = false;
  /** The tokens the client has, and the sampler's state after the last of them. */
  readonly #generated: number[] = [];
  #samplerState = 0;
  #started: DecodeStarted | null = null;
  #firstStarted: DecodeStarted | null = null;
  readonly #migrations: Migration[] = [];

  constructor(
    readonly ctx: FlowContext,
    readonly req: FlowRequest,
    readonly onToken: (token: number) => boolean,
  ) {
    this.#decode = ctx.router.pick('decode');
  }

  async run(): Promise<FlowOutcome> {
    const { req } = this;
    let decode = this.#decode;
    decode.active++;
    try {
      if (this.ctx.mode !== 'aggregated') await this.#runPrefill();
      const prefill = this.#prefill;
      if (prefill) {
        if (req.endTokens.includes(prefill.firstToken)) return this.#finish('stop');
        if (!this.#deliver(prefill.firstToken, prefill.samplerState)) return this.#finish('stop');
        if (req.maxTokens <= 1) return this.#finish('length');
      }
      for (;;) {
        // A worker that failed after the last token but before its end: nothing is left to generate.
        if (this.#generated.length >= req.maxTokens) return this.#finish('length');
        try {
          const done = await this.#stream(decode, this.#decodeRequest());
          return this.#finish(done?.finishReason ?? 'stop');
        } catch (err) {
          const next = this.#migrationTarget(decode, err);
          if (!next) throw err;
          decode.active--;
          decode = this.#decode = next;
          decode.active++;
        }
      }
    } finally {
      decode.active--;
      // Blocks nobody will take any more: the prefill worker's when no decode pulled them, the decode
      // worker's reservation when its Decode never ran.
      this.#releasePrefill();
      if (this.#reserved) void release(decode.client, req.requestId);
    }
  }

  /**
   * Prefill on a prefill worker, on another replica once if the first fails or is overloaded; when that fails
   * too, records why local prefill follows. Overloaded everywhere: KVF_ERR_OVERLOADED for the client, since
   * prefilling on the decode worker would only move the overload there.
   */
  async #runPrefill(): Promise<void> {
    const { ctx, req } = this;
    let failed: string | undefined;
    let overloaded: KvfError | undefined;
    for (let attempt = 0; attempt < 2; attempt++) {
      let entry: WorkerEntry;
      try {
        entry = ctx.router.pick('prefill', failed);
      } catch (err) {
        if (overloaded) throw overloaded;
        this.#fallbackReason ||= (err as Error).message;
        return;
      }
      this.#prefillEntry = entry;
      entry.active++;
      try {
        if (ctx.mode === 'push' && !this.#reserved) {
          this.#reserved = await call(
            this.#decode.client,
            'reserve',
            { requestId: req.requestId, tokens: req.prompt.length, maxTokens: req.maxTokens, leaseMs: ctx.leaseMs },
            ctx.prefillTimeoutMs,
            req.signal,
          );
        }
        this.#prefill = await call(
          entry.client,
          'prefill',
          { requestId: req.requestId, tokens: req.prompt, sampling: req.sampling, leaseMs: ctx.leaseMs, pushTo: this.#reserved },
          ctx.prefillTimeoutMs,
          req.signal,
        );
        this.#fallbackReason = '';
        return;
      } catch (err) {
        if (req.signal.aborted) throw abortError(req.signal);
        const e = fromServiceError(err, `prefill worker ${entry.status?.workerId ?? entry.address}`);
        const workerFault = WORKER_FAULTS.has(e.code);
        if (workerFault || e.code === 'KVF_ERR_TIMEOUT') ctx.router.markFailed(entry, e.message);
        ctx.log.warn({ requestId: req.requestId, err: e.message, retry: (workerFault || e.code === 'KVF_ERR_OVERLOADED') && attempt === 0 }, 'prefill failed');
        if (e.code === 'KVF_ERR_OVERLOADED') {
          if (attempt > 0) throw e;
          overloaded = e;
        } else {
          this.#fallbackReason = e.message;
          if (!workerFault) return;
        }
        failed = entry.address;
      } finally {
        entry.active--;
      }
    }
  }

  /** The Decode call for where the request stands: first on its decode worker, or resumed on another one. */
  #decodeRequest(): Partial<DecodeRequest> {
    const { req } = this;
    const base = { requestId: req.requestId, prompt: req.prompt, sampling: req.sampling, endTokens: req.endTokens, fallbackReason: this.#fallbackReason };
    if (this.#migrations.length === 0) {
      return { ...base, maxTokens: req.maxTokens, prefill: this.#prefill, reserved: this.#prefill ? this.#reserved : null };
    }
    return { ...base, maxTokens: req.maxTokens - this.#generated.length, generated: this.#generated, samplerState: this.#samplerState };
  }

  /** Streams one Decode call's tokens to the client; resolves with its end, or null when the client's stop matched. */
  async #stream(decode: WorkerEntry, request: Partial<DecodeRequest>): Promise<DecodeDone | null> {
    const { req } = this;
    const stream = decode.client.decode(request);
    const cancel = (): void => stream.cancel();
    req.signal.addEventListener('abort', cancel);
    let done: DecodeDone | undefined;
    try {
      for await (const ev of stream as AsyncIterable<DecodeEvent>) {
        if (ev.event === 'started') {
          this.#started = ev.started;
          this.#firstStarted ??= ev.started;
          // Pulled: the prefill worker frees its blocks on the READ's notification. Otherwise nobody will.
          if (ev.started.transfer?.op !== 'READ') this.#releasePrefill();
          else this.#prefillReleased = true;
          this.#reserved = null; // the decode worker took its reservation over
        } else if (ev.event === 'token') {
          if (!this.#deliver(ev.token, ev.samplerState)) {
            stream.cancel();
            return null;
          }
        } else if (ev.event === 'done') done = ev.done;
      }
    } catch (err) {
      if (req.signal.aborted) throw abortError(req.signal);
      // The call's own failure says something about the worker; anything else (the client's side) does not.
      if (typeof (err as Partial<grpc.ServiceError>).code !== 'number') throw err;
      throw fromServiceError(err, `decode worker ${decode.status?.workerId ?? decode.address}`);
    } finally {
      req.signal.removeEventListener('abort', cancel);
    }
    if (req.signal.aborted) throw abortError(req.signal);
    if (!done) throw new KvfError('KVF_ERR_WORKER_FAILED', `decode worker ${decode.status?.workerId ?? decode.address} ended the stream without finishing`);
    return done;
  }

  /** Another decode worker to continue on after `failed` failed with `err`, or undefined when the error stands. */
  #migrationTarget(failed: WorkerEntry, err: unknown): WorkerEntry | undefined {
    const e = err as KvfError;
    if (!WORKER_FAULTS.has(e.code) || this.req.signal.aborted) return undefined;
    this.ctx.router.markFailed(failed, e.message);
    if (this.#migrations.length >= this.ctx.maxMigrations) return undefined;
    let next: WorkerEntry;
    try {
      next = this.ctx.router.pick('decode', failed.address);
    } catch {
      return undefined;
    }
    const from = this.#started?.workerId ?? failed.status?.workerId ?? failed.address;
    this.#migrations.push({ from, after_tokens: this.#generated.length, reason: e.message });
    this.ctx.log.warn(
      { requestId: this.req.requestId, from, to: next.address, afterTokens: this.#generated.length, err: e.message },
      'decode worker failed; request moved',
    );
    this.#started = null;
    // A reservation the failed worker made is of no use elsewhere (its lease frees it if the worker is gone).
    if (this.#reserved) void release(failed.client, this.req.requestId);
    this.#reserved = null;
    return next;
  }

  /** Hands a token to the client; false when the client's stop sequence ended the request. */
  #deliver(token: number, samplerState: number): boolean {
    this.#generated.push(token);
    this.#samplerState = samplerState;
    return this.onToken(token);
  }

  #releasePrefill(): void {
    if (this.#prefillReleased || !this.#prefill?.kv) return;
    this.#prefillReleased = true;
    void release(this.#prefillEntry!.client, this.req.requestId);
  }

  #finish(finishReason: 'stop' | 'length'): FlowOutcome {
    const { ctx } = this;
    const decode = this.#decode;
    const prefill = this.#prefill;
    // The transfer that carried the prompt's K/V to the first decode worker (later ones rebuilt it).
    const first = this.#firstStarted;
    const t = first?.transfer ?? prefill?.push ?? null;
    const local = first?.localPrefill ?? false;
    const reason = first?.fallbackReason || this.#fallbackReason;
    return {
      finishReason,
      completionTokens: this.#generated.length,
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
        decode_worker: this.#started?.workerId ?? decode.status?.workerId ?? decode.address,
        prefill_ms: local ? null : (prefill?.prefillMs ?? null),
        fallback_reason: reason || null,
        migrations: this.#migrations,
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
