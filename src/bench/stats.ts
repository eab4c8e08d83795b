// Percentiles and event-loop delay summaries for the bench's points.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

/** Nearest-rank percentile (p in 0..100) of unsorted samples; 0 for none. */
export function percentile(samples: ArrayLike<number>, p: number): number {
  if (samples.length === 0) return 0;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1]!;
}

export interface LoopDelay {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/**
 * Event-loop delay over a stretch of time, sampled every millisecond. kvfabric completes transfers on its own
 * rail threads and hands batches to JS, so the loop should stay near its idle figure while data moves.
 */
export class LoopDelayMonitor {
  #h: IntervalHistogram = monitorEventLoopDelay({ resolution: 1 });

  start(): void {
    this.#h.reset();
    this.#h.enable();
  }

  stop(): LoopDelay {
    this.#h.disable();
    // With too few samples the histogram reports its sentinel values; treat a stretch that short as 0.
    if (this.#h.count === 0) return { p50Ms: 0, p99Ms: 0, maxMs: 0 };
    return { p50Ms: this.#h.percentile(50) / 1e6, p99Ms: this.#h.percentile(99) / 1e6, maxMs: this.#h.max / 1e6 };
  }
}

/** The loop's delay while it has nothing to do, for comparison with the points. */
export async function idleLoopDelay(ms: number): Promise<LoopDelay> {
  const m = new LoopDelayMonitor();
  m.start();
  await new Promise((r) => setTimeout(r, ms));
  return m.stop();
}
