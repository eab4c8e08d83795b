// The frontend's view of the workers: discovery sources add and remove them, a health loop asks each for its
// status, and choose() picks the healthy worker of a role: by default (round-robin) the one with the fewest
// requests this frontend has in flight on it (round-robin among equals); with the kv policy the one whose cached
// prefix of the prompt (kv-index.ts, fed by the workers' KV events) against its load costs least. A worker that fails a request is marked unhealthy at once and comes
// back when its health check passes again.
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ATTR, ROOT_CONTEXT, spanFailed, startSpan, type Context } from '../common/tracing.js';
import type { Role } from './config.js';
import type { RouterPolicy } from './config-schema.js';
import { KvIndex } from './kv-index.js';
import { DEFAULT_TOKENS_PER_BLOCK } from '../kv/plan.js';
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
  /** Requests of this frontend on the worker now, and their prompts' blocks (the kv router's load). */
  active: number;
  activeBlocks: number;
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
  /** kv: follow the workers' KV events and weigh cached prefix overlap against load; round-robin (default): load only. */
  policy?: RouterPolicy;
  weights?: { overlapWeight: number; loadWeight: number };
}

/** A router's choice: the worker, the prompt blocks it holds cached (kv policy), and why it was chosen. */
export interface RouteChoice {
  entry: WorkerEntry;
  overlap: number;
  reason: string;
  /** The reason's kind, a label of the decisions metric: cache, load, round-robin, only. */
  kind: 'cache' | 'load' | 'round-robin' | 'only';
}

export class Router {
  readonly #entries = new Map<string, WorkerEntry>();
  readonly #options: RouterOptions;
  // Round-robin position per role (one shared counter would step twice per request and skew the choice).
  readonly #turn: Record<Role, number> = { prefill: 0, decode: 0 };
  #timer: NodeJS.Timeout | undefined;
  /** Which worker holds which prefix (kv policy only). */
  readonly #index: KvIndex | undefined;
  /** Told of every choice (the decisions metric). */
  onChoice: ((role: Role, choice: RouteChoice) => void) | undefined;

  constructor(options: RouterOptions) {
    this.#options = options;
    if (options.policy === 'kv') this.#index = new KvIndex(options.log);
  }

  /** A prompt's blocks on a worker (its block size as its KV events say, else the default): its share of the load. */
  promptBlocks(entry: WorkerEntry, prompt: readonly number[]): number {
    return Math.ceil(prompt.length / (this.#index?.tokensPerBlock(entry.address) ?? DEFAULT_TOKENS_PER_BLOCK));
  }

  /** The prefix index (kv policy), for the flow's conditional disaggregation and the tests. */
  get index(): KvIndex | undefined {
    return this.#index;
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
    this.#index?.close();
    for (const e of this.#entries.values()) e.client.close();
    this.#entries.clear();
  }

  upsert(address: string, role: Role, source: WorkerSource, status?: WorkerStatus, ttlMs?: number): void {
    let entry = this.#entries.get(address);
    if (!entry || entry.role !== role) {
      if (entry) this.#index?.unwatch(address);
      entry?.client.close();
      entry = {
        address,
        role,
        source,
        client: workerClient(address, this.#options.auth, this.#options.keepaliveMs),
        healthy: false,
        status: undefined,
        active: 0,
        activeBlocks: 0,
        lastError: undefined,
        expiresAt: undefined,
      };
      this.#entries.set(address, entry);
      this.#options.log.info({ address, role, source }, 'worker added');
      const added = entry;
      this.#index?.watch(address, entry.client, () => added.status?.totalBlocks ?? 0);
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
    this.#index?.unwatch(address);
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
    return this.choose(role, { ...(exclude !== undefined ? { exclude } : {}), trace }).entry;
  }

  /**
   * The worker for a request of `prompt` (see pick). The kv policy weighs what each candidate's prefix cache holds of
   * the prompt against its load: cost = overlapWeight × prompt blocks it lacks + loadWeight × blocks of this
   * frontend's requests in flight on it; the cheapest wins, round-robin among equals. round-robin: fewest
   * requests in flight, round-robin among equals. The choice and its reason go to the span, the log and onChoice.
   */
  choose(role: Role, o: { prompt?: readonly number[]; exclude?: string; trace?: Context } = {}): RouteChoice {
    const span = startSpan('router.pick', o.trace ?? ROOT_CONTEXT, undefined, () => ({ [ATTR.role]: role }));
    try {
      const candidates = this.workers().filter((e) => e.role === role && e.healthy && e.address !== o.exclude);
      if (candidates.length === 0) {
        const known = this.workers().filter((e) => e.role === role);
        throw new KvfError(
          'KVF_ERR_NO_WORKER',
          known.length === 0
            ? `no ${role} worker is registered`
            : `none of the ${known.length} ${role} worker(s) is healthy (${known.map((e) => `${e.address}: ${e.lastError ?? 'starting'}`).join('; ')})`,
        );
      }
      const choice = this.#index && o.prompt ? this.#byCost(role, candidates, o.prompt) : this.#leastLoaded(role, candidates);
      this.#options.log.debug(
        { role, worker: choice.entry.status?.workerId ?? choice.entry.address, reason: choice.reason, cachedBlocks: choice.overlap },
        'route',
      );
      this.onChoice?.(role, choice);
      if (span.isRecording()) {
        span.setAttributes({
          [ATTR.workerId]: choice.entry.status?.workerId ?? '',
          'server.address': choice.entry.address,
          'kvfabric.router.candidates': candidates.length,
          'kvfabric.router.active': choice.entry.active,
          'kvfabric.router.reason': choice.reason,
          'kvfabric.router.cached_blocks': choice.overlap,
          ...(o.exclude ? { 'kvfabric.router.excluded': o.exclude } : {}),
        });
      }
      return choice;
    } catch (err) {
      spanFailed(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  #leastLoaded(role: Role, candidates: WorkerEntry[]): RouteChoice {
    const least = Math.min(...candidates.map((e) => e.active));
    const tied = candidates.filter((e) => e.active === least);
    const entry = tied[this.#turn[role]++ % tied.length]!;
    const reason = candidates.length === 1 ? 'only healthy worker' : tied.length === 1 ? 'fewest in flight' : `round-robin among ${tied.length} tied`;
    return { entry, overlap: 0, reason, kind: candidates.length === 1 ? 'only' : tied.length === 1 ? 'load' : 'round-robin' };
  }

  #byCost(role: Role, candidates: WorkerEntry[], prompt: readonly number[]): RouteChoice {
    const index = this.#index!;
    const { overlapWeight, loadWeight } = this.#options.weights ?? { overlapWeight: 1, loadWeight: 1 };
    const memo = new Map<string, string[]>();
    const scored = candidates.map((entry) => {
      const tpb = index.tokensPerBlock(entry.address) ?? 1;
      const overlap = index.overlap(entry.address, prompt, memo);
      const lacking = Math.ceil(prompt.length / tpb) - overlap;
      return { entry, overlap, cost: overlapWeight * lacking + loadWeight * entry.activeBlocks };
    });
    const best = Math.min(...scored.map((s) => s.cost));
    const tied = scored.filter((s) => s.cost === best);
    const { entry, overlap, cost } = tied[this.#turn[role]++ % tied.length]!;
    const most = Math.max(...scored.map((s) => s.overlap));
    const kind = candidates.length === 1 ? 'only' : tied.length > 1 ? 'round-robin' : overlap > 0 && overlap === most ? 'cache' : 'load';
    const reason =
      kind === 'only'
        ? 'only healthy worker'
        : kind === 'round-robin'
          ? `round-robin among ${tied.length} of equal cost ${cost}`
          : `lowest cost ${cost} (${overlap} prompt blocks cached, ${entry.activeBlocks} blocks in flight)`;
    return { entry, overlap, reason, kind };
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
