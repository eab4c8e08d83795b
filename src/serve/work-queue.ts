// A worker's admission control. The engine batches requests but prefills prompts in arrival order (a chunked
// prompt keeps the step's token budget until it is done), so a prompt admitted behind others waits for all of theirs: this tracks the prompt tokens admitted and not yet prefilled, measures how fast the
// engine prefills (tokens per second, a moving average of finished prefills), and refuses at once with
// KVF_ERR_OVERLOADED a prompt that could not be done before its caller's deadline at that rate, instead of
// starting work that would be cancelled half-way. Decode streams are capped in number: each adds a pass to
// every token of all the others.
import { KvfError } from '../common/errors.js';

export interface WorkQueueOptions {
  /** Decode streams at most (decode workers). */
  maxStreams: number;
  /** How long a prompt may wait for the engine when its caller gave no deadline. */
  maxQueueMs: number;
}

/** Weight of the newest sample in the prefill rate (an exponential moving average). */
const RATE_WEIGHT = 0.3;

export class WorkQueue {
  #queuedTokens = 0;
  #streams = 0;
  /** Prefilled tokens per millisecond; undefined until a prefill finished. */
  #rate: number | undefined;
  #lastEnd = 0;
  readonly #options: WorkQueueOptions;

  constructor(options: WorkQueueOptions) {
    this.#options = options;
  }

  get queuedTokens(): number {
    return this.#queuedTokens;
  }

  get streams(): number {
    return this.#streams;
  }

  /** Prefill tokens per second measured so far (0 before the first). */
  get prefillTokensPerSecond(): number {
    return (this.#rate ?? 0) * 1000;
  }

  /**
   * Admits a prompt of `tokens` that must be prefilled before `deadline` (ms since the epoch; Infinity: none).
   * Returns the function that ends it (call it once the prefill finished, failed or was cancelled; `completed`
   * says whether its time counts as a measurement).
   */
  admitPrefill(tokens: number, deadline: number): (completed: boolean) => void {
    const budgetMs = Math.min(deadline - Date.now(), this.#options.maxQueueMs);
    const waitMs = this.#rate ? (this.#queuedTokens + tokens) / this.#rate : 0;
    if (this.#queuedTokens > 0 && waitMs > budgetMs) {
      throw new KvfError(
        'KVF_ERR_OVERLOADED',
        `${this.#queuedTokens} prompt tokens are queued ahead; at ${Math.round(this.#rate! * 1000)} tokens/s this prompt of ${tokens} would finish in ${Math.round(waitMs)} ms, after its deadline (${Math.max(0, Math.round(budgetMs))} ms); retry later`,
      );
    }
    this.#queuedTokens += tokens;
    const admitted = performance.now();
    let ended = false;
    return (completed) => {
      if (ended) return;
      ended = true;
      this.#queuedTokens -= tokens;
      const now = performance.now();
      // Prompts run one after another: this one's engine time began when the one before it ended, or at its
      // admission if the engine was idle then.
      const spentMs = now - Math.max(admitted, this.#lastEnd);
      this.#lastEnd = now;
      if (!completed) return;
      const rate = tokens / Math.max(1, spentMs);
      this.#rate = this.#rate === undefined ? rate : this.#rate + RATE_WEIGHT * (rate - this.#rate);
    };
  }

  /** Admits a decode stream; returns the function that ends it. */
  admitStream(): () => void {
    if (this.#streams >= this.#options.maxStreams) {
      throw new KvfError('KVF_ERR_OVERLOADED', `${this.#streams} decode streams are running, the most this worker takes (--max-streams); retry later`);
    }
    this.#streams++;
    let ended = false;
    return () => {
      if (!ended) this.#streams--;
      ended = true;
    };
  }
}
