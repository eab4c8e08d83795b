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
  // The best value kept in a local: one read per element (greedy decoding runs this over the vocabulary per token).
  let best = 0;
  let top = logits[0]!;
  for (let i = 1, n = logits.length; i < n; i++) {
    const v = logits[i]!;
    if (v > top) {
      top = v;
      best = i;
    }
  }
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

  /**
   * Candidates ranked by logit (ties: lower id first): the top k of them (all when k is 0), weighted by softmax at
   * the temperature; top-p keeps the shortest ranked prefix whose weight reaches p of theirs; the draw walks the
   * kept prefix in rank order to a uniform point of its weight. Nothing is sorted whole (a vocabulary-wide sort
   * cost tens of ms a token): the walks partition around pivots (rankedWalk).
   */
  sample(logits: ArrayLike<number>): number {
    if (this.temperature === 0) return argmax(logits);
    const u = mulberry32Next(this.#prng);
    const max = logits[argmax(logits)]!;
    const weight = new Float64Array(logits.length);
    for (let i = 0; i < weight.length; i++) weight[i] = Math.exp((logits[i]! - max) / this.temperature);
    const outranks = (a: number, b: number): boolean => logits[a]! > logits[b]! || (logits[a] === logits[b] && a < b);
    let ids = this.topK > 0 ? topK(logits.length, this.topK, outranks) : range(logits.length);
    if (this.topP < 1) {
      const cut = rankedWalk(ids, weight, outranks, this.topP * massOf(ids, weight));
      ids = ids.filter((i) => i === cut || outranks(i, cut));
    }
    return rankedWalk(ids, weight, outranks, u * massOf(ids, weight));
  }
}

function range(n: number): number[] {
  const out = new Array<number>(n);
  for (let i = 0; i < n; i++) out[i] = i;
  return out;
}

function massOf(ids: readonly number[], weight: Float64Array): number {
  let m = 0;
  for (const i of ids) m += weight[i]!;
  return m;
}

/**
 * The id at which the weight of `ids`, taken in rank order, first reaches `target` (the lowest-ranked id when
 * rounding leaves it short). Partitions around a median-of-three pivot, keeping the side the target falls in,
 * until few ids are left, then walks those sorted: expected linear time, and the same answer on every machine.
 */
function rankedWalk(ids: readonly number[], weight: Float64Array, outranks: (a: number, b: number) => boolean, target: number): number {
  let set = ids;
  let need = target;
  while (set.length > 32) {
    const [a, b, c] = [set[0]!, set[set.length >> 1]!, set[set.length - 1]!];
    const pivot = outranks(a, b) === outranks(b, c) ? b : outranks(a, b) === outranks(c, a) ? a : c;
    const upper: number[] = [];
    const lower: number[] = [];
    for (const i of set) (i === pivot || outranks(i, pivot) ? upper : lower).push(i);
    const upperMass = massOf(upper, weight);
    if (upperMass >= need || lower.length === 0) set = upper;
    else {
      need -= upperMass;
      set = lower;
    }
  }
  const sorted = [...set].sort((x, y) => (outranks(x, y) ? -1 : outranks(y, x) ? 1 : 0));
  for (const i of sorted) {
    need -= weight[i]!;
    if (need <= 0) return i;
  }
  return sorted[sorted.length - 1]!;
}

/** The k best-ranked ids, by a bounded heap: O(n log k). */
function topK(n: number, k: number, outranks: (a: number, b: number) => boolean): number[] {
  if (k >= n) return range(n);
  // A heap whose root is the worst-ranked of the best k so far.
  const heap: number[] = [];
  const swap = (x: number, y: number): void => void ([heap[x], heap[y]] = [heap[y]!, heap[x]!]);
  for (let i = 0; i < n; i++) {
    if (heap.length < k) {
      heap.push(i);
      for (let at = heap.length - 1; at > 0 && outranks(heap[(at - 1) >> 1]!, heap[at]!); at = (at - 1) >> 1) swap(at, (at - 1) >> 1);
      continue;
    }
    if (!outranks(i, heap[0]!)) continue;
    heap[0] = i;
    for (let at = 0; ;) {
      const l = 2 * at + 1;
      const r = l + 1;
      let worst = at;
      if (l < k && outranks(heap[worst]!, heap[l]!)) worst = l;
      if (r < k && outranks(heap[worst]!, heap[r]!)) worst = r;
      if (worst === at) break;
      swap(at, worst);
      at = worst;
    }
  }
  return heap;
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
