// A worker's KV pool as peers see it: the blocks held for requests under leases, the grants and signed handles
// that reach them, the transfers in and out of them (pull, push) and the notification that frees pulled blocks.
// The pool is not remotely accessible: a peer reaches a request's blocks only through the grants in its
// handle, which are revoked before the blocks are cleared and freed, so a reused block never shows another
// request's K/V (docs/security.md).
import type { Agent, TransferReport } from '../fabric/agent.js';
import type { TransferDescriptor } from '../fabric/descriptors.js';
import { KvfError } from '../common/errors.js';
import { ATTR, inSpan, ROOT_CONTEXT, startSpan, type Context, type Span } from '../common/tracing.js';
import type { Grant } from '../fabric/grants.js';
import type { Logger } from '../common/logger.js';
import type { MemoryRegion } from '../fabric/memory.js';
import type { RemotePeer } from '../fabric/peer.js';
import type { ReferenceEngine } from '../engine/engine.js';
import { geometryFromMsg, layoutToMsg, type KvLayout } from '../kv/layout.js';
import { BlockLeases } from '../kv/leases.js';
import { PrefixCache, prefixSalt, reusableBlocks } from '../kv/prefix-cache.js';
import { blockRuns, kvBytesFor, planKvCopy, rangesInRuns, sameGeometry, type KvRange } from '../kv/plan.js';
import type { WorkerConfig } from './config.js';
import { PeerCache } from './peer-cache.js';
import type { KvHandle, TransferReportMsg } from './rpc.js';
import type { HandleAccess, HandleSigner } from './security/handles.js';

/**
 * How long blocks whose remote access was revoked without word from the peer (lease expired, Release call)
 * wait before reuse: a READ or WRITE the provider accepted before the revocation may still complete, and it
 * must not meet the next request's K/V. Far above any in-flight operation's remaining time (docs/security.md).
 */
const QUARANTINE_MS = 1000;

type KvConfig = Pick<WorkerConfig, 'id' | 'leaseMs' | 'maxLeaseMs' | 'peerIdleMs' | 'transferTimeoutMs' | 'maxQueueMs' | 'prefixCache'>;

/** A KV event: hashes this worker's prefix cache stored or evicted (the router's index follows them). */
export interface KvEventMsg {
  stored: string[];
  evicted: string[];
}

/** A sequence's blocks: `blocks[0..reused)` are shared cached blocks (read-only), the rest are its own. */
export interface SequenceBlocks {
  blocks: number[];
  reused: number;
}

/** A request waiting for the blocks of its sequence (allocate). */
interface BlockWaiter {
  count: number;
  /** Blocks set aside beside `count` for the sequence to grow into (see #growth). */
  growth: number;
  grant: (blocks: number[]) => void;
}

export class WorkerKv {
  readonly leases: BlockLeases;
  readonly peers: PeerCache;
  readonly #id: string;
  readonly #config: KvConfig;
  readonly #log: Logger;
  readonly #agent: Agent;
  readonly #region: MemoryRegion;
  readonly #engine: ReferenceEngine;
  readonly #signer: HandleSigner;
  // This agent's own blob, sent with every KV handle: its regions never change after start, so encode it once.
  readonly #metadata: Buffer;
  // Requests waiting for blocks, served in arrival order as blocks are freed.
  readonly #waiters: BlockWaiter[] = [];
  // Blocks promised to running sequences for their growth, by sequence (its block array), and in all: they stay
  // in the free list but count as taken, so a sequence admitted with room for its whole length never fails for
  // want of a block half-way (there is no preemption).
  readonly #growth = new WeakMap<readonly number[], number>();
  #promised = 0;
  /** Full blocks shared across requests by their chained hash (undefined: --prefix-cache off). */
  readonly cache: PrefixCache | undefined;
  readonly #eventListeners = new Set<(ev: KvEventMsg) => void>();
  readonly #pending: KvEventMsg[] = [];

  constructor(config: KvConfig, log: Logger, agent: Agent, region: MemoryRegion, engine: ReferenceEngine, signer: HandleSigner, modelName = '') {
    this.#id = config.id;
    this.#config = config;
    this.#log = log;
    this.#agent = agent;
    this.#region = region;
    this.#engine = engine;
    this.#signer = signer;
    this.leases = new BlockLeases({
      free: (blocks) => this.free(blocks),
      onExpire: (requestId, blocks) => log.warn({ requestId, blocks: blocks.length }, 'lease expired: blocks were never pulled; freed'),
      quarantineMs: QUARANTINE_MS,
    });
    this.peers = new PeerCache(agent, config.peerIdleMs);
    this.#metadata = agent.getLocalMetadata();
    if (config.prefixCache !== 'off') {
      this.cache = new PrefixCache({
        salt: prefixSalt({ name: modelName, ...engine.model }, engine.layout),
        tokensPerBlock: engine.layout.tokensPerBlock,
        evict: (blocks) => this.#clearAndFree(blocks),
        onStored: (stored) => this.#emit({ stored, evicted: [] }),
        onEvicted: (evicted) => this.#emit({ stored: [], evicted }),
      });
    }
    agent.on('notification', (n) => this.#onNotification(n.from, n.data));
  }

  get layout(): KvLayout {
    return this.#engine.layout;
  }

  /**
   * Holds blocks for a request under a lease (the caller's, or the configured one, never above this worker's
   * maximum), grants remote `access` to exactly them (one grant per run of consecutive blocks) and returns the
   * signed handle. However the hold ends, the grants are revoked first. On failure nothing stays held.
   */
  holdFor(requestId: string, access: HandleAccess, blocks: number[], tokens: number, askedLeaseMs: number, grantFrom = 0): KvHandle {
    const { expiresAt } = this.leases.hold(requestId, blocks, Math.min(askedLeaseMs || this.#config.leaseMs, this.#config.maxLeaseMs));
    const grants: Grant[] = [];
    const revoke = (): void => grants.forEach((g) => g.revoke());
    try {
      // A reservation's leading cached blocks (grantFrom) are held with it but never granted: peers only write the rest.
      const granted = blocks.slice(grantFrom);
      const size = this.layout.blockBytes;
      for (const run of blockRuns(granted)) grants.push(this.#agent.grant(this.#region, { offset: run.start * size, length: run.count * size, access }));
      const handle = this.#handle(requestId, access, granted, tokens, expiresAt, grants);
      this.leases.bind(requestId, handle.mac!, revoke);
      return handle;
    } catch (err) {
      revoke();
      this.leases.take(requestId);
      throw err;
    }
  }

  /**
   * Blocks for a request's sequence. When the pool has too few free blocks the request waits (behind the
   * requests waiting before it) until others free theirs, while its call lasts (`signal`: KVF_ERR_CANCELLED) and
   * until its deadline or --max-queue-ms, whichever comes first (then KVF_ERR_POOL_EXHAUSTED). A waiting request
   * holds no blocks, so waiting cannot deadlock; a sequence larger than the whole pool fails at once.
   */
  async allocate(count: number, signal: AbortSignal, deadline = Infinity, growth = 0): Promise<number[]> {
    const total = this.layout.numBlocks;
    if (count > total) throw new KvfError('KVF_ERR_POOL_EXHAUSTED', `the sequence needs ${count} KV blocks; the pool has ${total}`);
    // Growth beyond the whole pool cannot be promised; such a sequence may still fail when it grows that far.
    growth = Math.max(0, Math.min(growth, total - count));
    if (this.#waiters.length === 0 && this.available >= count + growth) return this.#grant(count, growth);
    if (signal.aborted) throw new KvfError('KVF_ERR_CANCELLED', 'the request ended while waiting for KV blocks');
    const waitMs = Math.max(0, Math.min(deadline - Date.now(), this.#config.maxQueueMs));
    return new Promise<number[]>((resolve, reject) => {
      const leave = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        const at = this.#waiters.indexOf(waiter);
        if (at >= 0) this.#waiters.splice(at, 1);
        // The next in line may fit where this one did not.
        if (at === 0) this.#wake();
      };
      const waiter: BlockWaiter = {
        count,
        growth,
        grant: (blocks) => {
          leave();
          resolve(blocks);
        },
      };
      const onAbort = (): void => {
        leave();
        reject(new KvfError('KVF_ERR_CANCELLED', 'the request ended while waiting for KV blocks'));
      };
      const timer = setTimeout(() => {
        leave();
        const free = this.available;
        reject(new KvfError('KVF_ERR_POOL_EXHAUSTED', `no ${count} free KV blocks within ${waitMs} ms (${free} of ${total} free); retry later`));
      }, waitMs);
      signal.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(waiter);
    });
  }

  /**
   * Blocks for a sequence of `count` blocks whose first tokens are `tokens`: its leading full blocks from the prefix
   * cache where they are cached (shared, read-only: only blocks strictly before the last prompt token's block), the
   * rest fresh (allocate: waiting as it says).
   */
  async sequence(tokens: readonly number[], count: number, signal: AbortSignal, deadline = Infinity, growth = 0): Promise<SequenceBlocks> {
    const tpb = this.layout.tokensPerBlock;
    const shared = this.cache ? this.cache.acquire(this.cache.hashesOf(tokens, Math.min(reusableBlocks(tokens.length, tpb), count - 1))) : [];
    try {
      const fresh = await this.allocate(count - shared.length, signal, deadline, growth);
      const blocks = [...shared, ...fresh];
      this.#moveGrowth(fresh, blocks);
      return { blocks, reused: shared.length };
    } catch (err) {
      this.free(shared);
      throw err;
    }
  }

  /**
   * Offers the full blocks of a sequence whose positions [0, written) hold K/V for `tokens` to the prefix cache;
   * from then on they are shared and never written again (the sequence writes only positions past them).
   */
  publish(tokens: readonly number[], blocks: readonly number[], written: number): void {
    if (!this.cache) return;
    const hashes = this.cache.hashesOf(tokens.slice(0, written));
    for (const [i, hash] of hashes.entries()) if (!this.cache.has(blocks[i]!)) this.cache.insert(hash, blocks[i]!);
  }

  /**
   * How many leading blocks of a reservation are shared cached blocks, checked against the prompt the Decode brings:
   * a reservation made for another prompt is refused (KVF_ERR_BAD_HANDLE).
   */
  heldPrefix(prompt: readonly number[], blocks: readonly number[]): number {
    let n = 0;
    while (n < blocks.length && this.cache?.has(blocks[n]!)) n++;
    if (n > 0 && !this.cache!.holds(this.cache!.hashesOf(prompt, n), blocks.slice(0, n)))
      throw new KvfError('KVF_ERR_BAD_HANDLE', 'the reservation was made for another prompt');
    return n;
  }

  /** Blocks a request could get now: free ones and idle cached ones (evicted on demand), less those promised. */
  get available(): number {
    return this.#engine.freeBlockCount + (this.cache?.evictable ?? 0) - this.#promised;
  }

  /** Sets aside up to `growth` blocks for a sequence that already has its blocks (a reservation), as far as there is room. */
  promiseGrowth(blocks: readonly number[], growth: number): void {
    const n = Math.max(0, Math.min(growth, this.available));
    if (n === 0) return;
    this.#growth.set(blocks, (this.#growth.get(blocks) ?? 0) + n);
    this.#promised += n;
  }

  #grant(count: number, growth: number): number[] {
    const blocks = this.#take(count);
    if (growth > 0) {
      this.#growth.set(blocks, growth);
      this.#promised += growth;
    }
    return blocks;
  }

  #moveGrowth(from: readonly number[], to: readonly number[]): void {
    const n = this.#growth.get(from);
    if (n === undefined) return;
    this.#growth.delete(from);
    this.#growth.set(to, n);
  }

  /** Cached hashes now, and a listener for what changes (the KV event stream); returns its unsubscribe. */
  subscribe(listener: (ev: KvEventMsg) => void): { snapshot: string[]; unsubscribe: () => void } {
    this.#eventListeners.add(listener);
    return { snapshot: this.cache?.hashes() ?? [], unsubscribe: () => this.#eventListeners.delete(listener) };
  }

  // Events of one turn of the event loop go out together: consecutive ones of the same kind merge (in order, so
  // a hash stored and then evicted is evicted at the end).
  #emit(ev: KvEventMsg): void {
    if (this.#eventListeners.size === 0) return;
    const last = this.#pending.at(-1);
    if (last && last.stored.length > 0 === ev.stored.length > 0) {
      last.stored.push(...ev.stored);
      last.evicted.push(...ev.evicted);
    } else this.#pending.push({ stored: [...ev.stored], evicted: [...ev.evicted] });
    if (!last) queueMicrotask(() => this.#flush());
  }

  #flush(): void {
    const events = this.#pending.splice(0);
    for (const ev of events) for (const listener of this.#eventListeners) listener(ev);
  }

  /** Takes `count` free blocks, evicting idle cached ones (least recently used) when the free list is short. */
  #take(count: number): number[] {
    const short = count - this.#engine.freeBlockCount;
    if (short > 0) this.cache?.evict(short);
    return this.#engine.allocateBlocks(count);
  }

  /** Requests waiting for blocks now. */
  get waiting(): number {
    return this.#waiters.length;
  }

  #wake(): void {
    const head = this.#waiters[0];
    if (head && this.available >= head.count + head.growth) head.grant(this.#grant(head.count, head.growth));
  }

  /**
   * Adds a block to a sequence's table when position `pos` lies past its end, from the blocks promised to it when
   * it was admitted. Past its promise, a pool without a free block fails the request here with
   * KVF_ERR_POOL_EXHAUSTED, which reaches its client at once.
   */
  growFor(blocks: number[], pos: number): void {
    if (pos < blocks.length * this.layout.tokensPerBlock) return;
    const promised = this.#growth.get(blocks) ?? 0;
    if (promised > 0) {
      this.#growth.set(blocks, promised - 1);
      this.#promised--;
    }
    blocks.push(...this.#take(1));
  }

  /**
   * After a transfer that timed out, its READs may still land in `blocks`: the sequence moves to fresh blocks (the
   * array is updated in place) and the old ones return to the pool only once the abandoned transfer has ended.
   */
  replaceAbandoned(blocks: number[], err: unknown): boolean {
    const settled = (err as KvfError).settled;
    if (!settled) return false;
    const abandoned = blocks.splice(0, blocks.length, ...this.#take(blocks.length));
    void settled.then(() => this.free(abandoned));
    return true;
  }

  /**
   * Ends a sequence's hold on its blocks: a cached block loses one reference (it stays cached, for the next prompt
   * that starts the same way), the others return to the pool cleared. Last blocks first, so a chain's first
   * blocks are the most recently used and its tail is evicted before them.
   */
  free(blocks: readonly number[]): void {
    this.#promised -= this.#growth.get(blocks) ?? 0;
    this.#growth.delete(blocks);
    const own = [...blocks].reverse().filter((b) => !this.cache?.release(b));
    this.#clearAndFree(own);
    this.#wake();
  }

  /** Returns blocks to the pool, cleared: whatever the next request leaves unwritten reads as zeros, not as another one's K/V. */
  #clearAndFree(blocks: readonly number[]): void {
    if (blocks.length === 0) return;
    const size = this.layout.blockBytes;
    for (const b of blocks) this.#region.bytes.fill(0, b * size, (b + 1) * size);
    this.#engine.freeBlocks(blocks);
  }

  /**
   * Pull mode: RDMA READ of the prompt's K/V from the prefill worker's blocks into ours; the notification tells it
   * to free them. A `kv.transfer` span under `trace`; when it fails the decode worker prefills locally (the
   * span's fallback reason says so, as pullFallbackReason words it).
   */
  async pull(requestId: string, kv: KvHandle, blocks: number[], trace: Context = ROOT_CONTEXT, skip = 0): Promise<TransferReportMsg> {
    const span = this.#transferSpan(trace, 'pull', 'READ', kv.workerId, kv.blocks.length - skip, kv.tokens);
    return inSpan(span, async () => {
      try {
        // The first `skip` blocks are in our prefix cache already: only the rest moves.
        const from = skip * this.layout.tokensPerBlock;
        if (!Number.isInteger(skip) || skip < 0 || from >= kv.tokens)
          throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `cannot skip ${skip} blocks of ${kv.tokens} tokens`);
        const ranges = planKvCopy(this.layout, kv.blocks.slice(skip), blocks.slice(skip), kv.tokens - from);
        const notification = JSON.stringify({ release: requestId, mac: Buffer.from(kv.mac!).toString('hex') });
        const report = await this.#throughGrants(kv, ranges, 'src', (peer, descs) =>
          this.#agent.read(peer, descs, { notification, timeoutMs: this.#config.transferTimeoutMs }),
        );
        return this.#report(requestId, report, kv.workerId, kv.tokens - from, span);
      } catch (err) {
        span.setAttribute(ATTR.fallbackReason, pullFallbackReason(kv.workerId, err));
        throw err;
      }
    });
  }

  /** Push mode: RDMA WRITE of the prompt's K/V into blocks the decode worker reserved (a `kv.transfer` span under `trace`). */
  async push(requestId: string, target: KvHandle, blocks: number[], tokens: number, trace: Context = ROOT_CONTEXT): Promise<TransferReportMsg> {
    // A reservation whose worker holds the first positions already names only the blocks after them.
    const held = target.tokens;
    const tpb = this.layout.tokensPerBlock;
    if (held % tpb !== 0 || held >= tokens) throw new KvfError('KVF_ERR_BAD_HANDLE', `the reservation holds ${held} of ${tokens} positions already`);
    blocks = blocks.slice(held / tpb);
    tokens -= held;
    const span = this.#transferSpan(trace, 'push', 'WRITE', target.workerId, blocks.length, tokens);
    return inSpan(span, async () => {
      const ranges = planKvCopy(this.layout, blocks, target.blocks, tokens);
      const report = await this.#throughGrants(target, ranges, 'dst', (peer, descs) =>
        this.#agent.write(peer, descs, { timeoutMs: this.#config.transferTimeoutMs }),
      );
      return this.#report(requestId, report, target.workerId, tokens, span);
    });
  }

  #transferSpan(trace: Context, mode: 'pull' | 'push', op: 'READ' | 'WRITE', peerWorker: string, blocks: number, tokens: number): Span {
    return startSpan('kv.transfer', trace, undefined, () => ({
      [ATTR.kvMode]: mode,
      [ATTR.kvOp]: op,
      [ATTR.workerId]: this.#id,
      [ATTR.kvPeerWorker]: peerWorker,
      [ATTR.kvBlocks]: blocks,
      [ATTR.kvTokens]: tokens,
      [ATTR.kvProvider]: this.#agent.provider,
      [ATTR.kvBackend]: this.#agent.backend,
    }));
  }

  /**
   * Runs a transfer to the blocks a peer's handle names, through the grants it carries (its pool itself is not
   * remotely accessible): the grants are added to the peer for this transfer only. `side` says which side of
   * `ranges` is the peer's.
   */
  async #throughGrants(
    kv: KvHandle,
    ranges: KvRange[],
    side: 'src' | 'dst',
    run: (peer: RemotePeer, descs: TransferDescriptor[]) => Promise<TransferReport>,
  ): Promise<TransferReport> {
    this.#checkLayout(kv);
    const runs = blockRuns(kv.blocks);
    if (kv.grants.length !== runs.length)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle carries ${kv.grants.length} grants for ${runs.length} runs of blocks`);
    const peer = this.peers.use(kv.agentName, kv.agentMetadata);
    const ids: number[] = [];
    try {
      for (const g of kv.grants) ids.push(peer.addGrant(g));
      const descs = rangesInRuns(ranges, side, runs, this.layout.blockBytes).map((r) => ({
        local: this.#region,
        localOffset: r.otherOffset,
        remote: ids[r.run]!,
        remoteOffset: r.runOffset,
        length: r.length,
      }));
      return await run(peer, descs);
    } finally {
      for (const id of ids) peer.removeGrant(id);
    }
  }

  #report(requestId: string, report: TransferReport, peerWorker: string, tokens: number, span: Span): TransferReportMsg {
    const msg = {
      op: report.op,
      backend: report.backend,
      provider: report.provider,
      rails: report.rails,
      bytes: report.bytes,
      durationMs: report.durationMs,
      descriptors: report.descriptors,
      initiator: this.#id,
      path: report.path,
    };
    this.#log.info({ requestId, workerId: this.#id, peerWorker, ...msg, gbps: report.gbps, expectedBytes: kvBytesFor(this.layout, tokens) }, 'kv transfer');
    if (span.isRecording())
      span.setAttributes({
        [ATTR.kvBytes]: report.bytes,
        [ATTR.kvPath]: report.path,
        [ATTR.kvProvider]: report.provider,
        [ATTR.kvBackend]: report.backend,
        [ATTR.kvRails]: report.rails,
        [ATTR.kvDescriptors]: report.descriptors,
        [ATTR.kvDurationMs]: report.durationMs,
        [ATTR.kvGbps]: report.gbps,
        [ATTR.kvExpress]: report.express,
      });
    return msg;
  }

  #checkLayout(kv: KvHandle): void {
    const theirs = geometryFromMsg(kv.layout);
    if (!theirs || !sameGeometry(theirs, this.layout)) {
      throw new KvfError(
        'KVF_ERR_LAYOUT_MISMATCH',
        `worker ${kv.workerId} holds K/V as ${JSON.stringify(theirs)}; this worker as ${JSON.stringify(this.layout)}`,
      );
    }
  }

  /** A signed handle to blocks this worker holds for a request, with the grants that reach them. */
  #handle(requestId: string, access: HandleAccess, blocks: number[], tokens: number, expiresAt: number, grants: Grant[]): KvHandle {
    return this.#signer.sign({
      requestId,
      workerId: this.#id,
      agentName: this.#agent.name,
      agentMetadata: this.#metadata,
      regionId: this.#region.id,
      blocks,
      layout: layoutToMsg(this.layout),
      tokens,
      leaseExpiresUnixMs: expiresAt,
      access,
      grants: grants.map((g) => g.bytes),
    });
  }

  /** A puller's "done, free them": honoured only with the MAC of the handle the blocks were issued under. */
  #onNotification(from: string, data: Uint8Array): void {
    let msg: { release?: unknown; mac?: unknown } = {};
    try {
      msg = JSON.parse(Buffer.from(data).toString('utf8')) as typeof msg;
    } catch {
      // Not ours to understand; notifications come from the network.
    }
    const { release: requestId, mac } = msg;
    if (typeof requestId !== 'string' || typeof mac !== 'string' || !/^[0-9a-f]{64}$/.test(mac)) return;
    if (this.leases.matches(requestId, Buffer.from(mac, 'hex')) && this.leases.release(requestId, true)) {
      this.#log.debug({ workerId: this.#id, requestId, from }, 'blocks pulled; freed');
    }
  }
}

/** Why a decode worker prefills locally after its pull failed; the code leads, so a partition (KVF_ERR_TIMEOUT) reads apart from a misconfigured peer. */
export function pullFallbackReason(fromWorker: string, err: unknown): string {
  const code = (err as KvfError).code;
  return `pulling KV from ${fromWorker} failed: ${code ? `${code}: ` : ''}${(err as Error).message}`;
}
