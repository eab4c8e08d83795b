// Blocks held for a request between the RPCs that fill them and the transfer that empties them: a prefill
// worker's blocks until a decode worker has pulled them (pull mode), a decode worker's reserved blocks until
// its Decode call takes them (push mode). Each hold expires after its lease, so blocks whose transfer never
// comes (a crashed or disconnected peer) go back to the pool. A hold remembers the MAC of the handle issued
// for it, so only that handle can take it over (a replayed or forged one finds nothing), and how to end the
// remote access granted with it: however a hold ends, that access ends first. Blocks released without word
// that the peer is done with them (expiry, a release call) wait `quarantineMs` before they are reused, as a
// remote operation the provider accepted before the revocation may still complete.
import { timingSafeEqual } from 'node:crypto';

import { KvfError } from '../common/errors.js';

/** setTimeout's limit: Node runs a longer timer after 1 ms, which would free blocks at once. */
export const MAX_LEASE_MS = 2 ** 31 - 1;

export interface Held {
  blocks: number[];
  expiresAt: number;
  /** The MAC of the handle issued for these blocks, once issued. */
  mac?: Uint8Array;
  /** Ends the remote access granted for these blocks. */
  revoke?: () => void;
}

export interface LeaseOptions {
  free: (blocks: number[], requestId: string) => void;
  onExpire?: (requestId: string, blocks: number[]) => void;
  quarantineMs?: number;
}

export class BlockLeases {
  readonly #held = new Map<string, Held & { timer: NodeJS.Timeout }>();
  readonly #quarantined = new Map<NodeJS.Timeout, () => void>();
  readonly #options: LeaseOptions;

  constructor(options: LeaseOptions) {
    this.#options = options;
  }

  /** Requests whose blocks are held or still in quarantine. */
  get size(): number {
    return this.#held.size + this.#quarantined.size;
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
      if (this.release(requestId)) this.#options.onExpire?.(requestId, blocks);
    }, ms);
    timer.unref();
    const held = { blocks, expiresAt, timer };
    this.#held.set(requestId, held);
    return held;
  }

  /** Records the MAC of the handle issued for a hold, and how to end the remote access it grants. */
  bind(requestId: string, mac: Uint8Array, revoke?: () => void): void {
    const held = this.#held.get(requestId);
    if (!held) return;
    held.mac = mac;
    held.revoke = revoke;
  }

  /** True when the request holds blocks and its handle's MAC is `mac`. */
  matches(requestId: string, mac: Uint8Array | null | undefined): boolean {
    const held = this.#held.get(requestId);
    return !!held?.mac && !!mac && held.mac.length === mac.length && timingSafeEqual(held.mac, mac);
  }

  /** Ends remote access and hands the blocks over to the caller (no longer leased, not freed); undefined if not held. */
  take(requestId: string): number[] | undefined {
    const held = this.#held.get(requestId);
    if (!held) return undefined;
    clearTimeout(held.timer);
    this.#held.delete(requestId);
    held.revoke?.();
    return held.blocks;
  }

  /**
   * Frees a request's blocks: at once when `peerDone` (the peer said its transfer finished), else after the
   * quarantine. False when it held none (already released, expired or never held).
   */
  release(requestId: string, peerDone = false): boolean {
    const blocks = this.take(requestId);
    if (!blocks) return false;
    const free = (): void => this.#options.free(blocks, requestId);
    const wait = this.#options.quarantineMs ?? 0;
    if (peerDone || wait <= 0) {
      free();
      return true;
    }
    const timer = setTimeout(() => {
      this.#quarantined.delete(timer);
      free();
    }, wait);
    timer.unref();
    this.#quarantined.set(timer, free);
    return true;
  }

  /** Ends every hold and quarantine now (the worker is closing). */
  releaseAll(): void {
    for (const id of [...this.#held.keys()]) this.release(id, true);
    for (const [timer, free] of this.#quarantined) {
      clearTimeout(timer);
      free();
    }
    this.#quarantined.clear();
  }
}
