// Token sampling over a logits vector: greedy, temperature, top-k, top-p, seeded. Pure and deterministic
// for a given seed, so disaggregated and aggregated runs can be compared token for token.
import { KvfError } from '../common/errors.js';

export interface SamplingOptions {
  /** 0 (default) = greedy. */
  temperature?: number;
  /** Keep the k most likely tokens (0 = all). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = all). */
  topP?: number;
  /** Seed of the sampler's PRNG; the same seed and logits give the same tokens. */
  seed?: number;
  /**
   * Resume a sampler's PRNG where another left off (`Sampler.state`), so a sequence sampled partly by a
   * prefill worker and partly by a decode worker draws the same numbers as one sampler would.
   */
  state?: number;
}

/** mulberry32: a small seeded PRNG, enough for sampling (and for tests that need reproducible data). */
export function mulberry32(seed: number): () => number {
  const state = { a: seed >>> 0 };
  return () => mulberry32Next(state);
}

function mulberry32Next(state: { a: number }): number {
  state.a = (state.a + 0x6d2b79f5) >>> 0;
  let t = state.a;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

export function argmax(logits: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i;
  return best;
}

export class Sampler {
  readonly temperature: number;
  readonly topK: number;
  readonly topP: number;
  readonly #prng: { a: number };

  constructor(options: SamplingOptions = {}) {
    const { temperature = 0, topK = 0, topP = 1, seed = 0, state } = options;
    if (!(temperature >= 0) || !Number.isFinite(temperature)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'temperature must be ≥ 0');
    if (!Number.isInteger(topK) || topK < 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'topK must be an integer ≥ 0');
    if (!(topP > 0 && topP <= 1)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'topP must be in (0, 1]');
    if (!Number.isInteger(seed)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'seed must be an integer');
    if (state !== undefined && !(Number.isInteger(state) && state >= 0 && state <= 0xffffffff)) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'state must be a 32-bit unsigned integer');
    }
    this.temperature = temperature;
    this.topK = topK;
    this.topP = topP;
    this.#prng = { a: state ?? seed >>> 0 };
  }

  /** The PRNG's state: pass it as `state` to continue this sampler's stream elsewhere. */
  get state(): number {
    return this.#prng.a;
  }

  sample(logits: ArrayLike<number>): number {
    if (this.temperature === 0) return argmax(logits);
    // Candidates sorted by logit; truncate by top-k, softmax at temperature, truncate by top-p, draw.
    let ids = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]!);
    if (this.topK > 0) ids = ids.slice(0, this.topK);
    const max = logits[ids[0]!]!;
    const weights = ids.map((i) => Math.exp((logits[i]! - max) / this.temperature));
    const total = weights.reduce((s, w) => s + w, 0);
    let keep = ids.length;
    if (this.topP < 1) {
      let mass = 0;
      for (let j = 0; j < ids.length; j++) {
        mass += weights[j]! / total;
        if (mass >= this.topP) {
          keep = j + 1;
          break;
        }
      }
    }
    const kept = weights.slice(0, keep).reduce((s, w) => s + w, 0);
    let r = mulberry32Next(this.#prng) * kept;
    for (let j = 0; j < keep; j++) {
      r -= weights[j]!;
      if (r <= 0) return ids[j]!;
    }
    return ids[keep - 1]!;
  }
}

/**
 * Finds the earliest stop sequence in generated text. Returns the text to emit (up to the stop) and whether
 * generation must end. `pending` is how many trailing characters may still turn into a stop sequence and
 * must be held back from a stream.
 */
export function checkStop(text: string, stops: readonly string[]): { emit: string; stopped: boolean; pending: number } {
  let cut = -1;
  for (const s of stops) {
    if (s === '') continue;
    const at = text.indexOf(s);
    if (at >= 0 && (cut < 0 || at < cut)) cut = at;
  }
  if (cut >= 0) return { emit: text.slice(0, cut), stopped: true, pending: 0 };
  let pending = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > pending; n--) {
      if (text.endsWith(s.slice(0, n))) {
        pending = n;
        break;
      }
    }
  }
  return { emit: text.slice(0, text.length - pending), stopped: false, pending };
}
