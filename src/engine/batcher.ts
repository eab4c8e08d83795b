// In-flight batching for an engine that runs one forward step at a time: the prefill and decode calls that arrive
// while a step runs are collected and run together as ONE batched step on the next one. Decodes go first, then
// prompt chunks up to the step's token budget (a long prompt is split across steps, and its call resolves when its
// last chunk ran). Requests join and leave the running batch at every step, so a decode worker's throughput grows
// with the requests it serves, while each sequence's logits stay bit-identical to a run alone (the native step's
// rows do not depend on each other; docs/design.md).
import { KvfError, fromNative } from '../common/errors.js';

/** One sequence of a native step: `tokens` at positions startPos.., written through `table`. */
export interface NativeStepEntry {
  tokens: Int32Array;
  table: Int32Array;
  startPos: number;
  /** Whether the last token's logits are wanted (not for a prompt's inner chunks). */
  logits: boolean;
  cancel: Int32Array;
}

/** Per entry: its logits, null when it asked for none, or the error that dropped it (the others ran on). */
export type NativeStep = (entries: NativeStepEntry[]) => Promise<Array<Float32Array | null | Error>>;

/** Where the last step's time went (the native step's own clock): the model's compute, and the thread hand-off. */
export type StepClock = () => { computeSeconds: number; handOffSeconds: number };

/** Defaults of the batching limits (ReferenceEngineOptions, the worker's --max-batch-sequences, --max-step-tokens). */
export const DEFAULT_MAX_BATCH_SEQUENCES = 32;
export const DEFAULT_MAX_STEP_TOKENS = 256;

export interface BatchLimits {
  /** Sequences in one step at most. */
  maxBatchSequences: number;
  /** Tokens (rows) in one step at most: decodes count one each, prompt chunks fill the rest. */
  maxStepTokens: number;
}

/** What the batcher did so far, for /health and /metrics. */
export interface BatchStats {
  /** Steps run, and the sequences and tokens they carried in all (averages: divide by steps). */
  steps: number;
  sequences: number;
  tokens: number;
  /** The step running now, or the last one. */
  lastSequences: number;
  lastTokens: number;
  /**
   * Seconds the engine computed in all steps, and spent handing steps to its thread and back; the same for the
   * steps that carried only decodes (one token per sequence), whose mean is the engine's decode step.
   */
  stepSeconds: number;
  handOffSeconds: number;
  decodeSteps: number;
  decodeStepSeconds: number;
  /** Calls waiting for a step (not in the one running). */
  waiting: number;
  maxBatchSequences: number;
  maxStepTokens: number;
}

interface Pending {
  tokens: Int32Array;
  table: Int32Array;
  start: number;
  /** Tokens already run (earlier chunks). */
  done: number;
  /** Tokens in the step running now (0: not in it). */
  running: number;
  signal: AbortSignal | undefined;
  cancel: Int32Array;
  resolve: (logits: Float32Array) => void;
  reject: (err: unknown) => void;
  onAbort: () => void;
}

export class StepBatcher {
  readonly #limits: BatchLimits;
  readonly #tokensPerBlock: number;
  readonly #run: NativeStep;
  #waiting: Pending[] = [];
  #busy = false;
  #scheduled = false;
  #soon = false;
  // Calls the last step resolved (their callers may come straight back with their next call), and the calls that
  // arrived since it ended.
  #resolved = 0;
  #arrived = 0;
  #idle: Array<() => void> = [];
  readonly #clock: StepClock | undefined;
  #stats = { steps: 0, sequences: 0, tokens: 0, lastSequences: 0, lastTokens: 0, stepSeconds: 0, handOffSeconds: 0, decodeSteps: 0, decodeStepSeconds: 0 };

  constructor(limits: BatchLimits, tokensPerBlock: number, run: NativeStep, clock?: StepClock) {
    if (!(limits.maxBatchSequences >= 1) || !(limits.maxStepTokens >= 1))
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'maxBatchSequences and maxStepTokens must be at least 1');
    this.#limits = limits;
    this.#tokensPerBlock = tokensPerBlock;
    this.#run = run;
    this.#clock = clock;
  }

  get stats(): BatchStats {
    return { ...this.#stats, waiting: this.#waiting.filter((p) => p.running === 0).length, ...this.#limits };
  }

  /** Runs `tokens` from `start` through `table` in the coming steps; resolves with the last token's logits. */
  submit(tokens: Int32Array, table: Int32Array, start: number, signal?: AbortSignal): Promise<Float32Array> {
    if (signal?.aborted) return Promise.reject(new KvfError('KVF_ERR_CANCELLED', 'forward pass dropped before it ran: its request ended'));
    if (tokens.length === 0) return Promise.reject(new KvfError('KVF_ERR_INVALID_ARGUMENT', 'prefill needs at least one token'));
    return new Promise<Float32Array>((resolve, reject) => {
      const cancel = new Int32Array(1);
      const p: Pending = { tokens, table, start, done: 0, running: 0, signal, cancel, resolve, reject, onAbort: () => {} };
      // The word the native step checks; a call not in the running step leaves the queue at once.
      p.onAbort = () => {
        cancel[0] = 1;
        if (p.running === 0) this.#settle(p, new KvfError('KVF_ERR_CANCELLED', 'forward pass dropped before it ran: its request ended'));
      };
      signal?.addEventListener('abort', p.onAbort, { once: true });
      this.#waiting.push(p);
      this.#arrived++;
      this.#schedule();
    });
  }

  /** Resolves once no call is waiting or running. */
  idle(): Promise<void> {
    if (!this.#busy && this.#waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  // The next step starts after the callers of the last one had their turn (their next calls join it): once as many
  // calls came back as it resolved, at once (so what those callers do next, such as writing the token out, overlaps
  // the engine's compute instead of delaying the step); else after this turn of the event loop (a caller that
  // ended does not come back).
  #schedule(): void {
    if (this.#busy || this.#waiting.length === 0) return;
    if (this.#resolved > 0 && this.#arrived >= this.#resolved) {
      if (this.#soon) return;
      this.#soon = true;
      queueMicrotask(() => {
        this.#soon = false;
        if (!this.#busy) void this.#step();
      });
      return;
    }
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      if (!this.#busy) void this.#step();
    });
  }

  async #step(): Promise<void> {
    const chosen = this.#choose();
    if (chosen.length === 0) return this.#drained();
    this.#busy = true;
    const entries = chosen.map((p) => {
      const end = p.done + p.running;
      return { tokens: p.tokens.subarray(p.done, end), table: p.table, startPos: p.start + p.done, logits: end === p.tokens.length, cancel: p.cancel };
    });
    this.#stats.steps++;
    this.#stats.sequences += chosen.length;
    this.#stats.lastSequences = chosen.length;
    this.#stats.lastTokens = entries.reduce((n, e) => n + e.tokens.length, 0);
    this.#stats.tokens += this.#stats.lastTokens;
    let results: Array<Float32Array | null | Error>;
    try {
      results = await this.#run(entries);
      this.#timed(this.#stats.lastTokens === chosen.length);
    } catch (err) {
      results = chosen.map(() => err as Error);
    }
    this.#busy = false;
    this.#resolved = 0;
    this.#arrived = 0;
    chosen.forEach((p, i) => this.#after(p, results[i]!));
    this.#drained();
    this.#schedule();
  }

  #timed(decodesOnly: boolean): void {
    if (!this.#clock) return;
    const { computeSeconds, handOffSeconds } = this.#clock();
    this.#stats.stepSeconds += computeSeconds;
    this.#stats.handOffSeconds += handOffSeconds;
    if (!decodesOnly) return;
    this.#stats.decodeSteps++;
    this.#stats.decodeStepSeconds += computeSeconds;
  }

  #after(p: Pending, result: Float32Array | null | Error): void {
    p.done += p.running;
    p.running = 0;
    if (result instanceof Error) this.#settle(p, fromNative(result));
    else if (p.done === p.tokens.length) {
      this.#settle(p, result!);
      this.#resolved++;
    } else if (p.signal?.aborted) this.#settle(p, new KvfError('KVF_ERR_CANCELLED', 'prefill stopped between chunks: its request ended'));
  }

  /**
   * The entries of the next step: decodes first, then prompt chunks in arrival order, within the limits. An entry
   * that touches a block an earlier waiting entry writes (or writes one it touches) waits for it: the rows of a
   * step run layer by layer together, and one sequence's calls must run in order.
   */
  #choose(): Pending[] {
    const written = new Set<number>();
    const touched = new Set<number>();
    const eligible: Pending[] = [];
    for (const p of this.#waiting) {
      const w = this.#blocks(p, p.start + p.done);
      const t = this.#blocks(p, 0);
      if (!w.some((b) => touched.has(b)) && !t.some((b) => written.has(b))) eligible.push(p);
      for (const b of w) written.add(b);
      for (const b of t) touched.add(b);
    }
    const { maxBatchSequences, maxStepTokens } = this.#limits;
    const chosen: Pending[] = [];
    let budget = maxStepTokens;
    for (const decodes of [true, false]) {
      for (const p of eligible) {
        if (chosen.length >= maxBatchSequences || budget === 0) break;
        const left = p.tokens.length - p.done;
        if ((left === 1) !== decodes) continue;
        p.running = Math.min(left, budget);
        budget -= p.running;
        chosen.push(p);
      }
    }
    return chosen;
  }

  /** Block ids of the table for positions [from, the entry's end). */
  #blocks(p: Pending, from: number): number[] {
    const end = p.start + p.tokens.length;
    const first = Math.floor(from / this.#tokensPerBlock);
    const last = Math.min(Math.ceil(end / this.#tokensPerBlock), p.table.length);
    return Array.from(p.table.subarray(first, last));
  }

  #settle(p: Pending, outcome: Float32Array | KvfError): void {
    const at = this.#waiting.indexOf(p);
    if (at < 0) return;
    this.#waiting.splice(at, 1);
    p.signal?.removeEventListener('abort', p.onAbort);
    if (outcome instanceof Float32Array) p.resolve(outcome);
    else p.reject(outcome);
  }

  #drained(): void {
    if (this.#busy || this.#waiting.length > 0) return;
    for (const resolve of this.#idle.splice(0)) resolve();
  }
}
