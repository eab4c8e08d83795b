// One request through the disaggregated stack, as the frontend drives it:
//   pull (default): Prefill on a prefill worker → first token + KV handle; Decode on a decode worker, which
//                   pulls the blocks with RDMA READ and notifies the prefill worker, which frees them.
//   push:           Reserve on the decode worker; Prefill WRITEs the K/V into those blocks; Decode.
//   aggregated:     Decode alone; the decode worker prefills locally.
// What each mode does before Decode, and how a failed prefill worker is replaced, is in flow-prefill.ts.
// A decode worker that fails mid-stream is replaced too (request migration): another one rebuilds the K/V of
// the prompt and the tokens the client already has, continues with the sampler's state, and the client's
// stream goes on.
// Blocks never leak: whatever ends the request (done, error, client gone, timeout), blocks held for it on
// either side are released here, and leases catch what a dead frontend leaves.
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ATTR, ROOT_CONTEXT, spanFailed, withSpan, type Context } from '../common/tracing.js';
import type { ServeMode } from './config.js';
import { abortError, noPrefill, prefillStep, WORKER_FAULTS, workerSpan } from './flow-prefill.js';
import { fromServiceError } from './grpc-errors.js';
import type { RouteChoice, Router, WorkerEntry } from './router.js';
import {
  grpc,
  traceMetadata,
  unary,
  type DecodeDone,
  type DecodeEvent,
  type DecodeRequest,
  type DecodeStarted,
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
  /** The request's trace context: its span is the parent of the router's and the worker calls' spans. */
  trace?: Context;
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
  /** 'fallback': remote prefill failed; 'local': the router had the decode worker prefill (conditional disaggregation). */
  mode: ServeMode | 'fallback' | 'local';
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
  /** Prefix cache: leading prompt blocks (and their K/V bytes) found cached, neither computed nor moved, on each side. */
  prefill_reused_blocks: number;
  prefill_reused_bytes: number;
  decode_reused_blocks: number;
  decode_reused_bytes: number;
  /** Why the router chose the workers it did. */
  route: { decode: string; prefill: string | null };
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
  /** Conditional disaggregation (0: never): see localPrefillReason. */
  localPrefillTokens?: number;
  prefillSaturation?: number;
  shortPromptTokens?: number;
  log: Logger;
}

/**
 * Runs a request; `onToken` gets each generated token in order and returns false to end generation there
 * (a stop sequence matched), which cancels the decode stream and finishes with reason 'stop'.
 */
export function runFlow(ctx: FlowContext, req: FlowRequest, onToken: (token: number) => boolean): Promise<FlowOutcome> {
  return new RequestFlow(ctx, req, onToken).run();
}

/** The tokens the client has, and the sampler's state after the last of them: what a migrated request resumes from. */
interface Progress {
  tokens: number[];
  samplerState: number;
}

class RequestFlow {
  /** The decode worker streaming the request now (another one after a migration). */
  #decode: WorkerEntry;
  /** What happened before Decode (flow-prefill.ts); its `reserved` is cleared once a Decode took the reservation over. */
  readonly #prefill = noPrefill();
  /** The prefill worker's blocks: released by us, or by the decode worker's READ notification. */
  #prefillReleased = false;
  readonly #progress: Progress = { tokens: [], samplerState: 0 };
  /** The current decode worker's start, and the first one's (whose transfer carried the prompt's K/V). */
  #started: DecodeStarted | null = null;
  #firstStarted: DecodeStarted | null = null;
  readonly #migrations: Migration[] = [];
  readonly #route: KvProof['route'];
  /** Why the decode worker prefills although the mode disaggregates ('' when it does not). */
  readonly #local: string;

  constructor(
    readonly ctx: FlowContext,
    readonly req: FlowRequest,
    readonly onToken: (token: number) => boolean,
  ) {
    const choice = ctx.router.choose('decode', { prompt: req.prompt, ...(req.trace ? { trace: req.trace } : {}) });
    this.#decode = choice.entry;
    this.#route = { decode: choice.reason, prefill: null };
    this.#local = ctx.mode === 'aggregated' ? '' : localPrefillReason(ctx, req.prompt, choice);
  }

  async run(): Promise<FlowOutcome> {
    this.#busy(this.#decode, 1);
    try {
      if (this.#local) {
        this.#prefill.fallbackReason = this.#local;
        this.ctx.log.debug({ requestId: this.req.requestId, reason: this.#local }, 'prefilled on the decode worker');
      } else await prefillStep(this.ctx, this.req, this.#decode, this.#prefill, (reason) => (this.#route.prefill = reason));
      const early = this.#deliverFirst();
      return this.#finish(early ?? (await this.#decodeMigrating()));
    } finally {
      this.#busy(this.#decode, -1);
      // Blocks nobody will take any more: the prefill worker's when no decode pulled them, the decode
      // worker's reservation when its Decode never ran.
      this.#releasePrefill();
      if (this.#prefill.reserved) void release(this.#decode.client, this.req.requestId);
    }
  }

  /** Counts the request in (1) or out (-1) of a worker's load: its requests and their prompts' blocks in flight. */
  #busy(entry: WorkerEntry, by: 1 | -1): void {
    entry.active += by;
    entry.activeBlocks += by * this.ctx.router.promptBlocks(entry, this.req.prompt);
  }

  /** The prefill worker's first token, if any, to the client; the finish reason when the request ends with it. */
  #deliverFirst(): 'stop' | 'length' | undefined {
    const first = this.#prefill.response;
    if (!first) return undefined;
    if (this.req.endTokens.includes(first.firstToken)) return 'stop';
    if (!this.#deliver(first.firstToken, first.samplerState)) return 'stop';
    if (this.req.maxTokens <= 1) return 'length';
    return undefined;
  }

  /** Decode on the current worker; when one fails mid-stream, on the next (request migration). */
  async #decodeMigrating(): Promise<'stop' | 'length'> {
    for (;;) {
      // A worker that failed after the last token but before its end: nothing is left to generate.
      if (this.#progress.tokens.length >= this.req.maxTokens) return 'length';
      try {
        const done = await this.#stream(this.#decode, this.#decodeRequest());
        return done?.finishReason ?? 'stop';
      } catch (err) {
        const next = this.#migrationTarget(this.#decode, err);
        if (!next) throw err;
        this.#busy(this.#decode, -1);
        this.#decode = next;
        this.#busy(this.#decode, 1);
      }
    }
  }

  /** The Decode call for where the request stands: first on its decode worker, or resumed on another one. */
  #decodeRequest(): Partial<DecodeRequest> {
    const { req } = this;
    const prefill = this.#prefill.response;
    const base = {
      requestId: req.requestId,
      prompt: req.prompt,
      sampling: req.sampling,
      endTokens: req.endTokens,
      fallbackReason: this.#prefill.fallbackReason,
    };
    if (this.#migrations.length === 0) {
      // A reservation whose prefill failed still holds the blocks the decode worker then prefills into.
      return { ...base, maxTokens: req.maxTokens, prefill, reserved: this.#prefill.reserved };
    }
    const { tokens, samplerState } = this.#progress;
    return { ...base, maxTokens: req.maxTokens - tokens.length, generated: tokens, samplerState };
  }

  /** Streams one Decode call's tokens to the client; resolves with its end, or null when the client's stop matched. */
  async #stream(decode: WorkerEntry, request: Partial<DecodeRequest>): Promise<DecodeDone | null> {
    const { req } = this;
    const span = workerSpan('decode', 'Decode', decode, req, {
      [ATTR.attempt]: this.#migrations.length + 1,
      'kvfabric.resumed_tokens': request.generated?.length ?? 0,
    });
    const stream = decode.client.decode(request, traceMetadata(withSpan(req.trace ?? ROOT_CONTEXT, span)));
    const cancel = (): void => stream.cancel();
    req.signal.addEventListener('abort', cancel);
    let done: DecodeDone | undefined;
    let tokens = 0;
    try {
      for await (const ev of stream as AsyncIterable<DecodeEvent>) {
        if (ev.event === 'started') {
          this.#started = ev.started;
          this.#firstStarted ??= ev.started;
          span.setAttributes({ [ATTR.workerId]: ev.started.workerId, 'kvfabric.local_prefill': ev.started.localPrefill });
          if (ev.started.fallbackReason) span.setAttribute(ATTR.fallbackReason, ev.started.fallbackReason);
          // Pulled: the prefill worker frees its blocks on the READ's notification. Otherwise nobody will.
          if (ev.started.transfer?.op !== 'READ') this.#releasePrefill();
          else this.#prefillReleased = true;
          this.#prefill.reserved = null; // the decode worker took its reservation over
        } else if (ev.event === 'token') {
          tokens++;
          if (!this.#deliver(ev.token, ev.samplerState)) {
            stream.cancel();
            span.setAttribute(ATTR.finishReason, 'stop');
            return null;
          }
        } else if (ev.event === 'done') done = ev.done;
      }
      if (req.signal.aborted) throw abortError(req.signal);
      if (!done) throw new KvfError('KVF_ERR_WORKER_FAILED', `decode worker ${decode.status?.workerId ?? decode.address} ended the stream without finishing`);
      span.setAttribute(ATTR.finishReason, done.finishReason);
      return done;
    } catch (err) {
      // The call's own failure says something about the worker; anything else (the client's side) does not.
      const e = req.signal.aborted
        ? abortError(req.signal)
        : typeof (err as Partial<grpc.ServiceError>).code !== 'number'
          ? err
          : fromServiceError(err, `decode worker ${decode.status?.workerId ?? decode.address}`);
      spanFailed(span, e);
      throw e;
    } finally {
      req.signal.removeEventListener('abort', cancel);
      span.setAttribute('kvfabric.streamed_tokens', tokens);
      span.end();
    }
  }

  /** Another decode worker to continue on after `failed` failed with `err`, or undefined when the error stands. */
  #migrationTarget(failed: WorkerEntry, err: unknown): WorkerEntry | undefined {
    const e = err as KvfError;
    if (!WORKER_FAULTS.has(e.code) || this.req.signal.aborted) return undefined;
    this.ctx.router.markFailed(failed, e.message);
    if (this.#migrations.length >= this.ctx.maxMigrations) return undefined;
    let next: WorkerEntry;
    try {
      next = this.ctx.router.pick('decode', failed.address, this.req.trace);
    } catch {
      return undefined;
    }
    const from = this.#started?.workerId ?? failed.status?.workerId ?? failed.address;
    this.#migrations.push({ from, after_tokens: this.#progress.tokens.length, reason: e.message });
    this.ctx.log.warn(
      { requestId: this.req.requestId, from, to: next.address, afterTokens: this.#progress.tokens.length, err: e.message },
      'decode worker failed; request moved',
    );
    this.#started = null;
    // A reservation the failed worker made is of no use elsewhere (its lease frees it if the worker is gone).
    if (this.#prefill.reserved) void release(failed.client, this.req.requestId);
    this.#prefill.reserved = null;
    return next;
  }

  /** Hands a token to the client; false when the client's stop sequence ended the request. */
  #deliver(token: number, samplerState: number): boolean {
    this.#progress.tokens.push(token);
    this.#progress.samplerState = samplerState;
    return this.onToken(token);
  }

  #releasePrefill(): void {
    if (this.#prefillReleased || !this.#prefill.response?.kv) return;
    this.#prefillReleased = true;
    void release(this.#prefill.entry!.client, this.req.requestId);
  }

  #finish(finishReason: 'stop' | 'length'): FlowOutcome {
    const { ctx } = this;
    const decode = this.#decode;
    const prefill = this.#prefill.response;
    // The transfer that carried the prompt's K/V to the first decode worker (later ones rebuilt it).
    const first = this.#firstStarted;
    const t = first?.transfer ?? prefill?.push ?? null;
    const local = first?.localPrefill ?? false;
    const reason = first?.fallbackReason || this.#prefill.fallbackReason;
    const mode = local && ctx.mode !== 'aggregated' ? (this.#local && reason === this.#local ? 'local' : 'fallback') : ctx.mode;
    return {
      finishReason,
      completionTokens: this.#progress.tokens.length,
      proof: {
        mode,
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
        prefill_reused_blocks: local ? 0 : (prefill?.reusedBlocks ?? 0),
        prefill_reused_bytes: local ? 0 : (prefill?.reusedBytes ?? 0),
        decode_reused_blocks: first?.reusedBlocks ?? 0,
        decode_reused_bytes: first?.reusedBytes ?? 0,
        route: this.#route,
      },
    };
  }
}

/**
 * Conditional disaggregation: why the decode worker should prefill this prompt itself ('' when a prefill worker
 * should): it holds all but a few of the prompt's tokens cached (--local-prefill-tokens; a transfer would cost
 * more than computing them), the prompt is short (--short-prompt-tokens: it would otherwise queue behind long
 * prompts at the prefill worker, for less compute than its hand-off), or every prefill worker has
 * --prefill-saturation requests in flight.
 */
export function localPrefillReason(ctx: FlowContext, prompt: readonly number[], decode: RouteChoice): string {
  const tpb = ctx.router.index?.tokensPerBlock(decode.entry.address);
  const limit = ctx.localPrefillTokens ?? 0;
  if (tpb && decode.overlap > 0 && limit > 0) {
    const lacking = prompt.length - decode.overlap * tpb;
    if (lacking <= limit)
      return `cached prefix: the decode worker holds ${decode.overlap * tpb} of ${prompt.length} prompt tokens; ${lacking} to compute (at most ${limit})`;
  }
  const short = ctx.shortPromptTokens ?? 0;
  if (short > 0) {
    const cached = tpb ? decode.overlap * tpb : 0;
    const toCompute = prompt.length - cached;
    if (toCompute <= short) return `short prompt: ${toCompute} tokens to compute (at most ${short})`;
  }
  const saturation = ctx.prefillSaturation ?? 0;
  if (saturation > 0) {
    const prefill = ctx.router.workers().filter((e) => e.role === 'prefill' && e.healthy);
    if (prefill.length > 0 && prefill.every((e) => e.active >= saturation))
      return `prefill saturated: every prefill worker has ${saturation} or more requests in flight`;
  }
  return '';
}

/** Frees what a worker holds for the request; best effort (its lease frees it otherwise). */
function release(client: WorkerClient, requestId: string): Promise<unknown> {
  return unary(client, client.release, { requestId }, 5000).catch(() => undefined);
}
