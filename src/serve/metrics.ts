// The frontend's Prometheus metrics (prom-client, one registry per frontend so several can live in a test
// process). Names follow Prometheus conventions: seconds and bytes, _total for counters.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

import type { Router } from './router.js';
import type { WorkerStatus } from './rpc.js';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class ServeMetrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'kvfabric_requests_total',
    help: 'HTTP API requests by route and status code',
    labelNames: ['route', 'status'],
    registers: [this.registry],
  });
  readonly inflight = new Gauge({ name: 'kvfabric_requests_inflight', help: 'Requests being served', registers: [this.registry] });
  readonly ttft = new Histogram({
    name: 'kvfabric_time_to_first_token_seconds',
    help: 'Time from request to first token',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly itl = new Histogram({
    name: 'kvfabric_inter_token_latency_seconds',
    help: 'Time between consecutive tokens of a response',
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });
  readonly inputTokens = new Counter({ name: 'kvfabric_input_tokens_total', help: 'Prompt tokens', registers: [this.registry] });
  readonly outputTokens = new Counter({ name: 'kvfabric_output_tokens_total', help: 'Generated tokens', registers: [this.registry] });
  readonly kvBytes = new Counter({
    name: 'kvfabric_kv_bytes_moved_total',
    help: 'KV cache bytes moved between workers',
    labelNames: ['backend', 'provider', 'op'],
    registers: [this.registry],
  });
  readonly kvTransfer = new Histogram({
    name: 'kvfabric_kv_transfer_seconds',
    help: 'Duration of KV transfers between workers',
    labelNames: ['provider', 'op'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [this.registry],
  });
  readonly refused = new Counter({ name: 'kvfabric_requests_refused_total', help: 'Requests refused at admission (429)', registers: [this.registry] });
  readonly fallbacks = new Counter({
    name: 'kvfabric_prefill_fallbacks_total',
    help: 'Requests prefilled on the decode worker because remote prefill failed',
    registers: [this.registry],
  });

  readonly routeDecisions = new Counter({
    name: 'kvfabric_router_decisions_total',
    help: 'Workers chosen by the router, by role and why: cache (most cached prefix at least cost), load, round-robin (tied), only',
    labelNames: ['role', 'reason'],
    registers: [this.registry],
  });
  readonly routeCachedBlocks = new Counter({
    name: 'kvfabric_router_cached_blocks_total',
    help: 'Prompt blocks the chosen worker held in its prefix cache (by the index), by role',
    labelNames: ['role'],
    registers: [this.registry],
  });
  readonly localPrefills = new Counter({
    name: 'kvfabric_local_prefills_total',
    help: 'Requests the router had the decode worker prefill (conditional disaggregation), by reason',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  readonly reusedBytes = new Counter({
    name: 'kvfabric_kv_bytes_reused_total',
    help: 'KV bytes of prompt blocks found in a prefix cache (neither computed nor moved), by side',
    labelNames: ['side'],
    registers: [this.registry],
  });

  /**
   * The exposition text without NaN samples: prom-client writes 'Nan' (not Prometheus's 'NaN') for the event-loop
   * lag's mean and deviation when two scrapes come within its sampling interval, and scrapers reject the page.
   */
  async text(): Promise<string> {
    const text = await this.registry.metrics();
    return text
      .split('\n')
      .filter((line) => line.startsWith('#') || !/\sNaN$/i.test(line))
      .join('\n');
  }

  constructor(router: Router) {
    collectDefaultMetrics({ register: this.registry, prefix: 'kvfabric_frontend_' });
    router.onChoice = (role, choice) => {
      this.routeDecisions.inc({ role, reason: choice.kind });
      this.routeCachedBlocks.inc({ role }, choice.overlap);
    };
    const poolGauge = (name: string, help: string, pick: (s: WorkerStatus) => number) =>
      new Gauge({
        name,
        help,
        labelNames: ['worker', 'role'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const w of router.workers()) if (w.status) this.set({ worker: w.status.workerId, role: w.role }, pick(w.status));
        },
      });
    poolGauge('kvfabric_kv_blocks_used', 'KV blocks in use per worker (last health check)', (s) => s.totalBlocks - s.freeBlocks);
    poolGauge('kvfabric_kv_blocks_total', 'KV blocks in each worker pool', (s) => s.totalBlocks);
    poolGauge('kvfabric_worker_queued_prompt_tokens', 'Prompt tokens admitted and not yet prefilled per worker (last health check)', (s) => s.queuedTokens);
    poolGauge('kvfabric_worker_decode_streams', 'Decode streams running per worker (last health check)', (s) => s.streams);
    poolGauge(
      'kvfabric_worker_prefill_tokens_per_second',
      'Measured prefill rate per worker, which its admission sizes the queue by',
      (s) => s.prefillTokensPerS,
    );
    // Continuous batching: rate(steps) and rate(sequences) / rate(steps) give steps per second and the average
    // batch; the last step's sequences over the limit is the batch occupancy now.
    poolGauge('kvfabric_worker_engine_steps', 'Batched engine steps run per worker (a count since it started)', (s) => s.engineSteps);
    poolGauge('kvfabric_worker_step_sequences', 'Sequences the engine steps carried in all per worker (a count since it started)', (s) => s.stepSequences);
    poolGauge('kvfabric_worker_step_tokens', 'Tokens the engine steps carried in all per worker (a count since it started)', (s) => s.stepTokens);
    poolGauge('kvfabric_worker_batch_sequences', 'Sequences in the running (or last) engine step per worker', (s) => s.batchSequences);
    poolGauge('kvfabric_worker_batch_tokens', 'Tokens in the running (or last) engine step per worker', (s) => s.stepTokensLast);
    poolGauge('kvfabric_worker_batch_occupancy', 'Sequences in the running (or last) step over --max-batch-sequences', (s) =>
      s.maxBatchSequences ? s.batchSequences / s.maxBatchSequences : 0,
    );
    // Engine time: rate(decode step seconds) / rate(decode steps) is the engine's decode step, the floor under ITL.
    poolGauge('kvfabric_worker_step_seconds', 'Seconds the engine computed its steps per worker (a count since it started)', (s) => s.stepSeconds);
    poolGauge(
      'kvfabric_worker_step_hand_off_seconds',
      "Seconds steps spent handed to and back from the engine's thread per worker (a count)",
      (s) => s.handOffSeconds,
    );
    poolGauge('kvfabric_worker_decode_steps', 'Engine steps that carried only decodes per worker (a count since it started)', (s) => s.decodeSteps);
    poolGauge('kvfabric_worker_decode_step_seconds', 'Seconds the engine computed its decode-only steps per worker (a count)', (s) => s.decodeStepSeconds);
    poolGauge('kvfabric_worker_cached_blocks', 'Blocks in the prefix cache per worker (last health check)', (s) => s.cachedBlocks);
    poolGauge('kvfabric_worker_cache_hit_ratio', 'Prompt blocks found in the prefix cache over those looked up, per worker', (s) =>
      s.cacheLookups ? s.cacheHits / s.cacheLookups : 0,
    );
    poolGauge('kvfabric_worker_waiting_passes', 'Prefill and decode calls waiting for an engine step per worker', (s) => s.waitingPasses);
    new Gauge({
      name: 'kvfabric_workers_healthy',
      help: 'Healthy workers per role',
      labelNames: ['role'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const role of ['prefill', 'decode']) this.set({ role }, router.workers().filter((w) => w.role === role && w.healthy).length);
      },
    });
  }
}
