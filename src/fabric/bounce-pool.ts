// Pinned bounce chunks for the staged path: one registered host region (registered with the rails once, and
// page-locked with the CUDA driver where there is one, so device copies run at full PCIe speed), cut into
// equal chunks. A chunk whose fabric operation may still be running (it timed out) is retired, never reused:
// the pool shrinks rather than hand out memory a late completion could still write.
import { KvfError } from '../common/errors.js';
import { gpuAddon } from './gpu-native.js';
import type { MemoryRegion } from './memory.js';

export interface Chunk {
  /** Index in the pool. */
  index: number;
  /** Offset of the chunk in the pool's region. */
  offset: number;
  bytes: Uint8Array;
}

interface Waiter {
  resolve: (c: Chunk) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

export class BouncePool {
  #free: Chunk[] = [];
  #waiters: Waiter[] = [];
  #pinned = false;
  #closed = false;

  constructor(
    readonly region: MemoryRegion,
    readonly chunkBytes: number,
  ) {
    const count = Math.floor(region.length / chunkBytes);
    for (let i = 0; i < count; i++) {
      const offset = i * chunkBytes;
      this.#free.push({ index: i, offset, bytes: region.bytes.subarray(offset, offset + chunkBytes) });
    }
    try {
      gpuAddon.cudaPinHost(region.bytes);
      this.#pinned = true;
    } catch {
      // No CUDA driver (a host stand-in run) or the driver refused: copies still work, pageable.
    }
  }

  /** Chunks the pool was made with. */
  get size(): number {
    return Math.floor(this.region.length / this.chunkBytes);
  }

  get available(): number {
    return this.#free.length;
  }

  /** A free chunk now, or undefined. */
  tryAcquire(): Chunk | undefined {
    return this.#closed ? undefined : this.#free.pop();
  }

  /** A free chunk, waiting up to `timeoutMs` for one (KVF_ERR_TIMEOUT), KVF_ERR_CLOSED once the pool closes. */
  acquire(timeoutMs: number): Promise<Chunk> {
    if (this.#closed) return Promise.reject(new KvfError('KVF_ERR_CLOSED', 'the agent is closing'));
    const c = this.#free.pop();
    if (c) return Promise.resolve(c);
    return new Promise((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.#waiters.splice(this.#waiters.indexOf(w), 1);
          reject(new KvfError('KVF_ERR_TIMEOUT', `no staging chunk came free within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.#waiters.push(w);
    });
  }

  release(c: Chunk): void {
    if (this.#closed) return;
    const w = this.#waiters.shift();
    if (w) {
      clearTimeout(w.timer);
      w.resolve(c);
    } else this.#free.push(c);
  }

  /** Fails the waiters and unpins; the agent deregisters the region. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(new KvfError('KVF_ERR_CLOSED', 'the agent is closing'));
    }
    this.#free = [];
    if (this.#pinned) {
      try {
        gpuAddon.cudaUnpinHost(this.region.bytes);
      } catch {
        // The memory is released with the agent either way.
      }
    }
  }
}
