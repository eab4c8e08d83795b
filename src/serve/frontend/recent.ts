// The dashboard's memory of recent requests: the last requests' kvfabric reports, and a one-minute window of
// finish times, TTFTs and inter-token gaps from which rates and exact percentiles are computed. Prometheus has
// the same latencies as histograms (metrics.ts), but bucketed for scrapers: a page that wants "p99 of the last
// minute" would read bucket bounds, not latencies. Everything here is bounded (ring buffers), so a busy frontend
// keeps a fixed amount of it.
import type { KvProof } from '../flow.js';

/** One finished request as the dashboard shows it (snake_case, like the API's own objects). */
export interface FinishedRequest {
  id: string;
  kind: 'completion' | 'chat';
  /** When it finished, Unix ms. */
  finished_at: number;
  stream: boolean;
  prompt_tokens: number;
  completion_tokens: number;
  ttft_ms: number | null;
  duration_ms: number;
  /** The kvfabric error code that ended it, or null when it completed. */
  error: string | null;
  /** The response's kvfabric report (null when it failed before one existed). */
  kvfabric: KvProof | null;
}

export interface Percentiles {
  p50: number | null;
  p90: number | null;
  p99: number | null;
  samples: number;
}

export interface RecentStats {
  window_s: number;
  requests_per_s: number;
  output_tokens_per_s: number;
  errors: number;
  ttft_ms: Percentiles;
  itl_ms: Percentiles;
  /** KV bytes moved since the frontend started: in all, and by what carried them (fabric, cma, mapped, …). */
  kv_bytes: { total: number; transfers: number; by_path: Record<string, number>; by_provider: Record<string, number> };
  totals: { requests: number; errors: number };
}

/** A fixed-size ring of timestamped numbers. */
class Ring {
  readonly #at: Float64Array;
  readonly #value: Float64Array;
  #next = 0;
  #size = 0;

  constructor(capacity: number) {
    this.#at = new Float64Array(capacity);
    this.#value = new Float64Array(capacity);
  }

  push(at: number, value: number): void {
    this.#at[this.#next] = at;
    this.#value[this.#next] = value;
    this.#next = (this.#next + 1) % this.#at.length;
    this.#size = Math.min(this.#size + 1, this.#at.length);
  }

  /** The values pushed at or after `since`. */
  since(since: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.#size; i++) if (this.#at[i]! >= since) out.push(this.#value[i]!);
    return out;
  }
}

function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { p50: null, p90: null, p99: null, samples: 0 };
  const sorted = values.sort((a, b) => a - b);
  // Nearest rank: a value that was actually observed, never an interpolation between two.
  const at = (q: number) => Math.round(sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]! * 1000) / 1000;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), samples: sorted.length };
}

export class RecentRequests {
  readonly windowMs: number;
  readonly #keep: number;
  readonly #last: FinishedRequest[] = [];
  // Per finished request: completion tokens (its finish time is the ring's time); TTFT of those that had one.
  readonly #finished = new Ring(4096);
  readonly #ttft = new Ring(4096);
  readonly #itl = new Ring(16_384);
  readonly #errors = new Ring(4096);
  readonly #listeners = new Set<(r: FinishedRequest) => void>();
  readonly #startedAt = Date.now();
  readonly #kv = { total: 0, transfers: 0, by_path: {} as Record<string, number>, by_provider: {} as Record<string, number> };
  #requests = 0;
  #failures = 0;

  /** `keep`: how many reports the dashboard lists; `windowMs`: what rates and percentiles cover. */
  constructor(keep = 20, windowMs = 60_000) {
    this.#keep = keep;
    this.windowMs = windowMs;
  }

  /** One gap between two tokens of a response, in ms (recorded as it happens, so a long stream counts while it runs). */
  interTokenGap(ms: number): void {
    this.#itl.push(Date.now(), ms);
  }

  add(r: FinishedRequest): void {
    this.#requests++;
    this.#finished.push(r.finished_at, r.completion_tokens);
    if (r.ttft_ms !== null) this.#ttft.push(r.finished_at, r.ttft_ms);
    if (r.error !== null) {
      this.#failures++;
      this.#errors.push(r.finished_at, 1);
    }
    const proof = r.kvfabric;
    if (proof && proof.bytes > 0) {
      this.#kv.total += proof.bytes;
      this.#kv.transfers++;
      const path = proof.path ?? 'unknown';
      this.#kv.by_path[path] = (this.#kv.by_path[path] ?? 0) + proof.bytes;
      this.#kv.by_provider[proof.provider] = (this.#kv.by_provider[proof.provider] ?? 0) + proof.bytes;
    }
    this.#last.unshift(r);
    if (this.#last.length > this.#keep) this.#last.length = this.#keep;
    for (const listener of this.#listeners) listener(r);
  }

  /** The last requests, newest first. */
  last(): FinishedRequest[] {
    return [...this.#last];
  }

  stats(now = Date.now()): RecentStats {
    const since = now - this.windowMs;
    // A frontend up for ten seconds has a ten-second window, not a minute of which fifty seconds were empty.
    const span = Math.max(1, Math.min(this.windowMs, now - this.#startedAt)) / 1000;
    const finished = this.#finished.since(since);
    const round = (x: number) => Math.round(x * 100) / 100;
    return {
      window_s: round(span),
      requests_per_s: round(finished.length / span),
      output_tokens_per_s: round(finished.reduce((n, t) => n + t, 0) / span),
      errors: this.#errors.since(since).length,
      ttft_ms: percentiles(this.#ttft.since(since)),
      itl_ms: percentiles(this.#itl.since(since)),
      kv_bytes: structuredClone(this.#kv),
      totals: { requests: this.#requests, errors: this.#failures },
    };
  }

  /** Calls `listener` with each request as it finishes; returns the function that stops that. */
  subscribe(listener: (r: FinishedRequest) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}
