// The owner's side of remote staging (stage-protocol.ts): it answers peers' requests for its device regions by
// copying through its own pinned chunks, each lent to one request under a one-shot grant with fresh keys.
// Requests come from the network: a request must name a remotely accessible device region with its token and
// ranges inside it that fit one chunk together; a peer holds at most `perPeer` chunks; a request that finds no chunk
// for it waits in a bounded queue (at most `leaseMs`; a full queue answers OVERLOADED and the requester asks
// again), served in arrival order as chunks come back; a chunk's lease ends after `leaseMs` whatever the peer
// does, and a chunk taken back that way rests for `quarantineMs` before reuse (an operation the provider
// accepted before the revoke may still finish).
import { timingSafeEqual } from 'node:crypto';

import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { BouncePool, Chunk } from './bounce-pool.js';
import type { DeviceRegion } from './device-region.js';
import type { Grant } from './grants.js';
import { STAGE, encodeStage, type StageMessage, type StageRange } from './stage-protocol.js';

export interface StageServerHost {
  readonly name: string;
  deviceRegion(id: number): DeviceRegion | undefined;
  /** The pool chunks are lent from (made on first use). */
  servePool(): BouncePool;
  grantChunk(pool: BouncePool, chunk: Chunk, length: number, access: 'read' | 'write'): Grant;
  /** Sends to a loaded peer; rejects when the peer is not loaded. */
  send(peer: string, data: Buffer): Promise<void>;
  log?: Logger;
}

export interface StageServerLimits {
  leaseMs: number;
  perPeer: number;
  quarantineMs: number;
}

type Request = Extract<StageMessage, { type: typeof STAGE.out | typeof STAGE.in }>;

interface Waiting {
  peer: string;
  m: Request;
  region: DeviceRegion;
  since: number;
}

interface Lease {
  peer: string;
  req: number;
  dir: 'out' | 'in';
  region: DeviceRegion;
  ranges: StageRange[];
  /** The ranges' total: the chunk's bytes in use. */
  length: number;
  chunk: Chunk;
  grant: Grant;
  timer: NodeJS.Timeout;
}

/** Requests that may wait for a chunk, per chunk of the pool (beyond: OVERLOADED, asked again later). */
const QUEUE_PER_CHUNK = 4;

export class StageServer {
  #leases = new Map<string, Lease>();
  #perPeer = new Map<string, number>();
  #timers = new Set<NodeJS.Timeout>();
  #waiting: Waiting[] = [];
  #closed = false;

  constructor(
    private readonly host: StageServerHost,
    private readonly limits: StageServerLimits,
  ) {}

  get leases(): number {
    return this.#leases.size;
  }

  /** True while the region is lent out in a chunk (deregistering it then is refused). */
  busy(region: DeviceRegion): boolean {
    for (const l of this.#leases.values()) if (l.region === region) return true;
    return false;
  }

  /** A request, commit or release from `peer` (the requester side's messages go to StagedTransfers). */
  handle(peer: string, m: StageMessage): void {
    if (this.#closed) return;
    try {
      if (m.type === STAGE.out || m.type === STAGE.in) this.#lend(peer, m);
      else if (m.type === STAGE.commit) this.#commit(peer, m.req);
      else if (m.type === STAGE.release) this.#end(this.#leases.get(key(peer, m.req)), false);
    } catch (err) {
      const e = err instanceof KvfError ? err : new KvfError('KVF_ERR_CUDA', String(err));
      this.#reply(peer, { type: STAGE.error, req: m.req, code: e.code, message: e.message });
    }
  }

  close(): void {
    this.#closed = true;
    for (const l of this.#leases.values()) clearTimeout(l.timer);
    for (const t of this.#timers) clearTimeout(t);
    this.#leases.clear();
    this.#timers.clear();
    this.#waiting = [];
  }

  /** Checks a request; lends a chunk at once, or queues it until one comes back. */
  #lend(peer: string, m: Request): void {
    const region = this.host.deviceRegion(m.region);
    if (!region || !region.remoteAccess || !region.registered || !sameToken(region.token, m.token)) {
      throw new KvfError('KVF_ERR_REMOTE_ACCESS', `${this.host.name} has no device region ${m.region} open to peers with that token`);
    }
    let total = 0;
    for (const r of m.ranges) {
      if (r.offset + r.length > region.length) {
        throw new KvfError('KVF_ERR_OUT_OF_RANGE', `[${r.offset}, ${r.offset + r.length}) is outside device region ${m.region} (${region.length} bytes)`);
      }
      total += r.length;
    }
    const pool = this.host.servePool();
    if (total > pool.chunkBytes) throw new KvfError('KVF_ERR_TOO_LARGE', `a staging request moves at most ${pool.chunkBytes} bytes`);
    const k = key(peer, m.req);
    if (this.#leases.has(k) || this.#waiting.some((w) => w.peer === peer && w.m.req === m.req)) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `request ${m.req} is already staged`);
    }
    if (this.#waiting.length >= QUEUE_PER_CHUNK * pool.size)
      throw new KvfError('KVF_ERR_OVERLOADED', `${this.host.name} has too many staging requests waiting`);
    this.#waiting.push({ peer, m, region, since: performance.now() });
    this.#drain();
  }

  /** Serves queued requests in order while chunks are free; drops (answers) those that waited a lease. */
  #drain(): void {
    const now = performance.now();
    for (let i = 0; i < this.#waiting.length;) {
      const w = this.#waiting[i]!;
      if (now - w.since > this.limits.leaseMs) {
        this.#waiting.splice(i, 1);
        this.#reply(w.peer, {
          type: STAGE.error,
          req: w.m.req,
          code: 'KVF_ERR_OVERLOADED',
          message: `${this.host.name} found no staging chunk within ${this.limits.leaseMs} ms`,
        });
        continue;
      }
      if (this.host.servePool().available === 0) return;
      let served: boolean;
      try {
        served = this.#serve(w.peer, w.m, w.region);
      } catch (err) {
        served = true;
        const e = err instanceof KvfError ? err : new KvfError('KVF_ERR_CUDA', String(err));
        this.#reply(w.peer, { type: STAGE.error, req: w.m.req, code: e.code, message: e.message });
      }
      if (served) this.#waiting.splice(i, 1);
      else i++; // that peer holds all it may; a later request of another peer may go first
    }
  }

  /** Lends a chunk to a checked request if the peer may hold another and one is free; false if not now. */
  #serve(peer: string, m: Request, region: DeviceRegion): boolean {
    const pool = this.host.servePool();
    const k = key(peer, m.req);
    const held = this.#perPeer.get(peer) ?? 0;
    const chunk = held < this.limits.perPeer ? pool.tryAcquire() : undefined;
    if (!chunk) return false;
    if (!region.registered) {
      pool.release(chunk);
      throw new KvfError('KVF_ERR_CLOSED', `device region ${region.id} was deregistered`);
    }
    const length = m.ranges.reduce((n, r) => n + r.length, 0);
    let grant: Grant;
    try {
      if (m.type === STAGE.out) eachRange(m.ranges, (r, at) => region.copyTo(chunk.bytes.subarray(at, at + r.length), r.offset));
      grant = this.host.grantChunk(pool, chunk, length, m.type === STAGE.out ? 'read' : 'write');
    } catch (err) {
      pool.release(chunk);
      throw err;
    }
    const dir = m.type === STAGE.out ? 'out' : 'in';
    const timer = setTimeout(() => this.#end(this.#leases.get(k), true), this.limits.leaseMs);
    this.#leases.set(k, { peer, req: m.req, dir, region, ranges: m.ranges, length, chunk, grant, timer });
    this.#perPeer.set(peer, held + 1);
    // Unsent, the grant reached no one: the chunk can go back at once.
    this.#reply(peer, { type: STAGE.granted, req: m.req, grant: grant.bytes }, () => this.#end(this.#leases.get(k), false));
    return true;
  }

  #commit(peer: string, req: number): void {
    const lease = this.#leases.get(key(peer, req));
    if (!lease || lease.dir !== 'in') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `no chunk is lent for writing to request ${req}`);
    // Revoked before the copy: nothing the peer sends can change the chunk while it is copied in.
    lease.grant.revoke();
    try {
      if (!lease.region.registered) throw new KvfError('KVF_ERR_CLOSED', `device region ${lease.region.id} was deregistered`);
      const { region, chunk } = lease;
      eachRange(lease.ranges, (r, at) => region.copyFrom(chunk.bytes.subarray(at, at + r.length), r.offset));
    } finally {
      this.#end(lease, false);
    }
    this.#reply(peer, { type: STAGE.done, req });
  }

  /** Ends a lease: the grant revoked, the chunk back in the pool (after a rest when the peer never said it was done). */
  #end(lease: Lease | undefined, expired: boolean): void {
    if (!lease) return;
    const k = key(lease.peer, lease.req);
    if (this.#leases.get(k) !== lease) return;
    this.#leases.delete(k);
    clearTimeout(lease.timer);
    const held = (this.#perPeer.get(lease.peer) ?? 1) - 1;
    if (held > 0) this.#perPeer.set(lease.peer, held);
    else this.#perPeer.delete(lease.peer);
    lease.grant.revoke();
    const pool = this.host.servePool();
    if (!expired) {
      pool.release(lease.chunk);
      this.#drain();
      return;
    }
    this.host.log?.warn({ agent: this.host.name, peer: lease.peer, req: lease.req }, 'staging lease expired: the chunk was taken back');
    const t = setTimeout(() => {
      this.#timers.delete(t);
      pool.release(lease.chunk);
      this.#drain();
    }, this.limits.quarantineMs);
    this.#timers.add(t);
  }

  #reply(peer: string, m: StageMessage, unsent?: () => void): void {
    // A peer this agent has not loaded cannot be answered; its requester's deadline ends its wait.
    this.host.send(peer, encodeStage(m)).catch((err: unknown) => {
      this.host.log?.debug({ agent: this.host.name, peer, err }, 'staging reply not sent');
      unsent?.();
    });
  }
}

/** Calls f with each range and where it starts in the chunk (the ranges follow each other there). */
function eachRange(ranges: readonly StageRange[], f: (r: StageRange, at: number) => void): void {
  let at = 0;
  for (const r of ranges) {
    f(r, at);
    at += r.length;
  }
}

function key(peer: string, req: number): string {
  return `${peer}\u0000${req}`;
}

function sameToken(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
