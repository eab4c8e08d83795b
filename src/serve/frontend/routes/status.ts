// Liveness, readiness (with each worker's state) and Prometheus metrics: what probes and scrapers read.
import type { FastifyInstance } from 'fastify';

import type { Router } from '../../router.js';
import type { WorkerStatus } from '../../rpc.js';
import type { RouteContext } from './context.js';

/**
 * The workers as /health (and the dashboard) show them. No addresses: these routes are unauthenticated, and where
 * workers listen is nobody else's business.
 */
export function workerViews(router: Router) {
  return router.workers().map((w) => ({
    id: w.status?.workerId ?? null,
    role: w.role,
    source: w.source,
    healthy: w.healthy,
    provider: w.status?.provider ?? null,
    rails: w.status?.rails ?? null,
    total_blocks: w.status?.totalBlocks ?? null,
    free_blocks: w.status?.freeBlocks ?? null,
    inflight: w.status?.inflight ?? null,
    queued_tokens: w.status?.queuedTokens ?? null,
    streams: w.status?.streams ?? null,
    prefill_tokens_per_s: w.status ? Math.round(w.status.prefillTokensPerS) : null,
    batch: w.status ? batchView(w.status) : null,
    prefix_cache: w.status ? cacheView(w.status, router.index?.size(w.address) ?? null) : null,
    last_error: w.lastError === undefined ? null : w.lastError.replaceAll(w.address, '<worker>'),
  }));
}

/** The worker's prefix cache (its own count, and what this frontend's index holds of it), and the hit rate so far. */
function cacheView(s: WorkerStatus, indexed: number | null) {
  return {
    blocks: s.cachedBlocks,
    idle_blocks: s.idleCachedBlocks,
    indexed_blocks: indexed,
    lookups: s.cacheLookups,
    hits: s.cacheHits,
    hit_rate: s.cacheLookups ? Math.round((s.cacheHits / s.cacheLookups) * 1000) / 1000 : 0,
    evictions: s.cacheEvictions,
  };
}

/** The engine's continuous batching: the last step, averages over all steps, the limits. */
function batchView(s: WorkerStatus) {
  const per = (n: number) => (s.engineSteps ? Math.round((n / s.engineSteps) * 100) / 100 : 0);
  return {
    sequences: s.batchSequences,
    tokens: s.stepTokensLast,
    occupancy: s.maxBatchSequences ? s.batchSequences / s.maxBatchSequences : 0,
    waiting: s.waitingPasses,
    steps: s.engineSteps,
    avg_sequences: per(s.stepSequences),
    avg_tokens: per(s.stepTokens),
    max_sequences: s.maxBatchSequences,
    max_step_tokens: s.maxStepTokens,
    // Counts since the worker started: a client diffs two readings for the engine's step time over a span.
    step_sequences: s.stepSequences,
    step_tokens: s.stepTokens,
    step_seconds: s.stepSeconds,
    hand_off_seconds: s.handOffSeconds,
    decode_steps: s.decodeSteps,
    decode_step_seconds: s.decodeStepSeconds,
    avg_decode_step_ms: s.decodeSteps ? Math.round((s.decodeStepSeconds / s.decodeSteps) * 1e5) / 100 : 0,
  };
}

export function statusRoutes(app: FastifyInstance, { options, admission }: RouteContext): void {
  const { metrics } = options;
  app.get('/live', () => ({ status: 'ok' }));
  app.get('/health', (_req, reply) => {
    const workers = workerViews(options.flow.router);
    const ready = workers.some((w) => w.role === 'decode' && w.healthy);
    void reply.code(ready ? 200 : 503);
    return {
      status: ready ? 'ok' : 'unavailable',
      model: options.modelName,
      mode: options.flow.mode,
      inflight: admission.inflight,
      max_inflight: admission.max,
      workers,
    };
  });
  app.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.text();
  });
}
