// The frontend's view of the workers: discovery sources add and remove them, a health loop asks each for its
// status, and pick() chooses the healthy worker of a role with the fewest requests this frontend has in
// flight on it (round-robin among equals). A worker that fails a request is marked unhealthy at once and comes
// back when its health check passes again.
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ATTR, ROOT_CONTEXT, spanFailed, startSpan, type Context } from '../common/tracing.js';
import type { Role } from './config.js';
import { unary, workerClient, type WorkerClient, type WorkerStatus } from './rpc.js';
import type { ClusterAuth } from './security/auth.js';

export type WorkerSource = 'static' | 'etcd' | 'registry';

export interface WorkerEntry {
  address: string;
  role: Role;
  source: WorkerSource;
  client: WorkerClient;
  healthy: boolean;
  status: WorkerStatus | undefined;
  /** Requests of this frontend on the worker now. */
  active: number;
  lastError: string | undefined;
  /** Registry entries expire unless renewed. */
  expiresAt: number | undefined;
}

export interface RouterOptions {
  healthIntervalMs: number;
  /** Keepalive of the calls to workers (see workerClient). */
  keepaliveMs: number;
  /** Credentials of every call to the workers. */
  auth: ClusterAuth;
  log: Logger;
  onChange?: () => void;
}

export class Router {
  readonly #entries = new Map<string, WorkerEntry>();
  readonly #options: RouterOptions;
  // Round-robin position per role (one shared counter would step twice per request and skew the choice).
  readonly #turn: Record<Role, number> = { prefill: 0, decode: 0 };
  #timer: NodeJS.Timeout | undefined;

  constructor(options: RouterOptions) {
    this.#options = options;
  }

  start(): void {
    const loop = (): void => {
      void this.checkHealth().finally(() => {
        if (this.#timer) this.#timer = setTimeout(loop, this.#options.healthIntervalMs).unref();
      });
    };
    this.#timer = setTimeout(loop, 0).unref();
  }

  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const e of this.#entries.values()) e.client.close();
    this.#entries.clear();
  }

  upsert(address: string, role: Role, source: WorkerSource, status?: WorkerStatus, ttlMs?: number): void {
    let entry = this.#entries.get(address);
    if (!entry || entry.role !== role) {
      entry?.client.close();
      entry = {
        address,
        role,
        source,
        client: workerClient(address, this.#options.auth, this.#options.keepaliveMs),
        healthy: false,
        status: undefined,
        active: 0,
        lastError: undefined,
        expiresAt: undefined,
      };
      this.#entries.set(address, entry);
      this.#options.log.info({ address, role, source }, 'worker added');
      void this.#check(entry);
    }
    if (status) entry.status = status;
    entry.expiresAt = ttlMs ? Date.now() + ttlMs : undefined;
    this.#options.onChange?.();
  }

  remove(address: string, why: string): void {
    const entry = this.#entries.get(address);
    if (!entry) return;
    this.#entries.delete(address);
    entry.client.close();
    this.#options.log.info({ address, role: entry.role, why }, 'worker removed');
    this.#options.onChange?.();
  }

  workers(): WorkerEntry[] {
    return [...this.#entries.values()];
  }

  /**
   * The worker to use for a role; KVF_ERR_NO_WORKER when none is healthy. `exclude` skips one that just failed.
   * `trace`: the request's context, under which the choice is a `router.pick` span (chosen worker, reason).
   */
  pick(role: Role, exclude?: string, trace: Context = ROOT_CONTEXT): WorkerEntry {
    const span = startSpan('router.pick', trace, undefined, () => ({ [ATTR.role]: role }));
    try {
      const candidates = this.workers().filter((e) => e.role === role && e.healthy && e.address !== exclude);
      if (candidates.length === 0) {
        const known = this.workers().filter((e) => e.role === role);
        throw new KvfError(
          'KVF_ERR_NO_WORKER',
          known.length === 0
            ? `no ${role} worker is registered`
            : `none of the ${known.length} ${role} worker(s) is healthy (${known.map((e) => `${e.address}: ${e.lastError ?? 'starting'}`).join('; ')})`,
        );
      }
      const least = Math.min(...candidates.map((e) => e.active));
      const tied = candidates.filter((e) => e.active === least);
      const chosen = tied[this.#turn[role]++ % tied.length]!;
      if (span.isRecording()) {
        span.setAttributes({
          [ATTR.workerId]: chosen.status?.workerId ?? '',
          'server.address': chosen.address,
          'kvfabric.router.candidates': candidates.length,
          'kvfabric.router.active': least,
          'kvfabric.router.reason':
            candidates.length === 1 ? 'only healthy worker' : tied.length === 1 ? 'fewest in flight' : `round-robin among ${tied.length} tied`,
          ...(exclude ? { 'kvfabric.router.excluded': exclude } : {}),
        });
      }
      return chosen;
    } catch (err) {
      spanFailed(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  /** Marks a worker unhealthy after a failed call; the health loop brings it back. */
  markFailed(entry: WorkerEntry, error: string): void {
    if (this.#entries.get(entry.address) !== entry) return;
    entry.healthy = false;
    entry.lastError = error;
    this.#options.onChange?.();
  }

  async checkHealth(): Promise<void> {
    const now = Date.now();
    for (const e of this.workers()) if (e.expiresAt !== undefined && e.expiresAt < now) this.remove(e.address, 'registration expired');
    await Promise.all(this.workers().map((e) => this.#check(e)));
  }

  async #check(entry: WorkerEntry): Promise<void> {
    try {
      const status = await unary(entry.client, entry.client.health, {}, Math.max(500, this.#options.healthIntervalMs));
      const wasHealthy = entry.healthy;
      entry.status = status;
      entry.healthy = status.role === entry.role;
      entry.lastError = entry.healthy ? undefined : `reports role ${status.role}, expected ${entry.role}`;
      if (!wasHealthy && entry.healthy) this.#options.log.info({ address: entry.address, workerId: status.workerId, role: entry.role }, 'worker healthy');
    } catch (err) {
      if (entry.healthy) this.#options.log.warn({ address: entry.address, role: entry.role, err: (err as Error).message }, 'worker unhealthy');
      entry.healthy = false;
      entry.lastError = (err as Error).message;
    }
    this.#options.onChange?.();
  }
}
