// Blocks held for a request between the RPCs that fill them and the transfer that empties them: a prefill
// worker's blocks until a decode worker has pulled them (pull mode), a decode worker's reserved blocks until
// its Decode call takes them (push mode). Each hold expires after its lease, so blocks whose transfer never
// comes (a crashed or disconnected peer) go back to the pool. A hold remembers the MAC of the handle issued
// for it, so only that handle can take it over (a replayed or forged one finds nothing).
import { timingSafeEqual } from 'node:crypto';

import { KvfError } from '../fabric/errors.js';

/** setTimeout's limit: Node runs a longer timer after 1 ms, which would free blocks at once. */
export const MAX_LEASE_MS = 2 ** 31 - 1;

export interface Held {
  blocks: number[];
  expiresAt: number;
  /** The MAC of the handle issued for these blocks, once issued. */
  mac?: Uint8Array;
}

export class BlockLeases {
  readonly #held = new Map<string, Held & { timer: NodeJS.Timeout }>();
  readonly #free: (blocks: number[], requestId: string) => void;
  readonly #onExpire: ((requestId: string, blocks: number[]) => void) | undefined;

  constructor(free: (blocks: number[], requestId: string) => void, onExpire?: (requestId: string, blocks: number[]) => void) {
    this.#free = free;
    this.#onExpire = onExpire;
  }

  get size(): number {
    return this.#held.size;
  }

  has(requestId: string): boolean {
    return this.#held.has(requestId);
  }

  /** Holds blocks for leaseMs, clamped to [1, MAX_LEASE_MS]. */
  hold(requestId: string, blocks: number[], leaseMs: number): Held {
    if (this.#held.has(requestId)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `request '${requestId}' already holds blocks here`);
    const ms = Math.min(MAX_LEASE_MS, Math.max(1, Math.floor(leaseMs) || 1));
    const expiresAt = Date.now() + ms;
    const timer = setTimeout(() => {
      if (this.release(requestId)) this.#onExpire?.(requestId, blocks);
    }, ms);
    timer.unref();
    const held = { blocks, expiresAt, timer };
    this.#held.set(requestId, held);
    return held;
  }

  /** Records the MAC of the handle issued for a hold. */
  bind(requestId: string, mac: Uint8Array): void {
    const held = this.#held.get(requestId);
    if (held) held.mac = mac;
  }

  /** True when the request holds blocks and its handle's MAC is `mac`. */
  matches(requestId: string, mac: Uint8Array | null | undefined): boolean {
    const held = this.#held.get(requestId);
    return !!held?.mac && !!mac && held.mac.length === mac.length && timingSafeEqual(held.mac, mac);
  }

  /** Hands the blocks over to the caller (no longer leased, not freed); undefined if not held. */
  take(requestId: string): number[] | undefined {
    const held = this.#held.get(requestId);
    if (!held) return undefined;
    clearTimeout(held.timer);
    this.#held.delete(requestId);
    return held.blocks;
  }

  /** Frees a request's blocks; false when it held none (already released, expired or never held). */
  release(requestId: string): boolean {
    const blocks = this.take(requestId);
    if (!blocks) return false;
    this.#free(blocks, requestId);
    return true;
  }

  releaseAll(): void {
    for (const id of [...this.#held.keys()]) this.release(id);
  }
}
