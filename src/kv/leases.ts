// Blocks held for a request between the RPCs that fill them and the transfer that empties them: a prefill
// worker's blocks until a decode worker has pulled them (pull mode), a decode worker's reserved blocks until
// its Decode call takes them (push mode). Each hold expires after its lease, so blocks whose transfer never
// comes (a crashed or disconnected peer) go back to the pool.
import { KvfError } from '../fabric/errors.js';

export interface Held {
  blocks: number[];
  expiresAt: number;
}

export class BlockLeases {
  readonly #held = new Map<string, Held & { timer: NodeJS.Timeout }>();
  readonly #free: (blocks: number[]) => void;
  readonly #onExpire: ((requestId: string, blocks: number[]) => void) | undefined;

  constructor(free: (blocks: number[]) => void, onExpire?: (requestId: string, blocks: number[]) => void) {
    this.#free = free;
    this.#onExpire = onExpire;
  }

  get size(): number {
    return this.#held.size;
  }

  has(requestId: string): boolean {
    return this.#held.has(requestId);
  }

  hold(requestId: string, blocks: number[], leaseMs: number): Held {
    if (this.#held.has(requestId)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `request '${requestId}' already holds blocks here`);
    const expiresAt = Date.now() + leaseMs;
    const timer = setTimeout(() => {
      if (this.release(requestId)) this.#onExpire?.(requestId, blocks);
    }, leaseMs);
    timer.unref();
    this.#held.set(requestId, { blocks, expiresAt, timer });
    return { blocks, expiresAt };
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
    this.#free(blocks);
    return true;
  }

  releaseAll(): void {
    for (const id of [...this.#held.keys()]) this.release(id);
  }
}
