// The two-worker stack the serving benchmarks compare: 1 prefill + 1 decode worker (disaggregated) or 2 workers
// that each prefill and decode (aggregated), started through the real CLI, with the frontend in this process.
import { frontendConfig, type ServeMode } from '../../src/serve/config.js';
import { Frontend } from '../../src/serve/frontend/frontend.js';
import { CLUSTER, quietLog, startWorker, stop, type Proc } from '../../test/helpers/serve.js';

/** How often the frontend asks each worker for its health (and counters). */
export const HEALTH_INTERVAL_MS = 500;

export interface StackOptions {
  model: string;
  provider: string;
  mode: ServeMode;
  /** Extra worker flags. */
  extra: string[];
  /** A command prefix for worker i (0 or 1), e.g. taskset to pin it to a core. */
  prefix?: (i: number) => string[];
  /** Extra frontend settings (config keys, as the flags give them). */
  frontend?: Record<string, unknown>;
}

/** Runs `fn` against the stack's frontend URL once every worker is ready; stops everything after. */
export async function withStack<T>(o: StackOptions, fn: (url: string) => Promise<T>): Promise<T> {
  const workers: Proc[] = [];
  const start = (i: number, role: 'prefill' | 'decode', id: string) =>
    startWorker(role, { model: o.model, provider: o.provider, id, extra: o.extra, ...(o.prefix ? { prefix: o.prefix(i) } : {}) });
  try {
    if (o.mode === 'aggregated') for (const i of [0, 1]) workers.push(await start(i, 'decode', `agg-${i}`));
    else {
      workers.push(await start(0, 'prefill', 'prefill-0'));
      workers.push(await start(1, 'decode', 'decode-0'));
    }
    const byRole = (role: string) => workers.filter((w) => w.ready.role === role).map((w) => w.ready.address);
    const frontend = await Frontend.start(
      frontendConfig({
        flags: {
          ...CLUSTER,
          model: o.model,
          listen: '127.0.0.1:0',
          prefill: byRole('prefill'),
          decode: byRole('decode'),
          mode: o.mode,
          healthIntervalMs: HEALTH_INTERVAL_MS,
          ...o.frontend,
        },
        env: {},
      }),
      quietLog,
    );
    try {
      await frontend.workersReady(o.mode === 'aggregated' ? ['decode'] : ['prefill', 'decode']);
      return await fn(frontend.url);
    } finally {
      await frontend.close();
    }
  } finally {
    await Promise.all(workers.map(stop));
  }
}
