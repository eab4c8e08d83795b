// The frontend's index of which worker's prefix cache holds which block hashes, fed by each worker's KV event
// stream (a full snapshot on every (re)connect, then what it stores and evicts). A worker whose stream ends or
// errs (it died, restarted or was removed) loses its entries until its next snapshot; a frontend that restarts
// rebuilds the whole index from the snapshots. Events come from the network: their hashes, salt and counts are
// checked, and a worker never has more entries than its pool has blocks.
import type { Logger } from '../common/logger.js';
import { blockHashes, HASH_PATTERN, reusableBlocks } from '../kv/prefix-cache.js';
import type { KvEvent, WorkerClient } from './rpc.js';

/** Hashes one event may carry at most, and a worker's entries when its pool size is not known yet. */
export const MAX_EVENT_HASHES = 1 << 20;
const MAX_TOKENS_PER_BLOCK = 1 << 16;
const RETRY_MS = 500;

interface Held {
  salt: string;
  tokensPerBlock: number;
  hashes: Set<string>;
}

export class KvIndex {
  readonly #held = new Map<string, Held>();
  readonly #streams = new Map<string, { cancel: () => void }>();
  readonly #log: Logger;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Hashes indexed for a worker (0 when none). */
  size(address: string): number {
    return this.#held.get(address)?.hashes.size ?? 0;
  }

  /** Leading blocks of `prompt` the worker holds (only those a request may reuse: before the last token's block). */
  overlap(address: string, prompt: readonly number[], memo = new Map<string, string[]>()): number {
    const h = this.#held.get(address);
    if (!h || h.hashes.size === 0) return 0;
    const key = `${h.salt}/${h.tokensPerBlock}`;
    let hashes = memo.get(key);
    if (!hashes) {
      hashes = blockHashes(h.salt, prompt, h.tokensPerBlock, reusableBlocks(prompt.length, h.tokensPerBlock));
      memo.set(key, hashes);
    }
    let n = 0;
    while (n < hashes.length && h.hashes.has(hashes[n]!)) n++;
    return n;
  }

  tokensPerBlock(address: string): number | undefined {
    return this.#held.get(address)?.tokensPerBlock;
  }

  /** Follows a worker's KV events until unwatch(); reconnects after a stream ends (dropping its entries meanwhile). */
  watch(address: string, client: WorkerClient, maxBlocks: () => number): void {
    if (this.#streams.has(address)) return;
    const state = { cancel: () => {}, stopped: false };
    this.#streams.set(address, {
      cancel: () => {
        state.stopped = true;
        state.cancel();
      },
    });
    const connect = (): void => {
      if (state.stopped) return;
      const stream = client.kvEvents({});
      state.cancel = () => stream.cancel();
      let ended = false;
      const retry = (): void => {
        if (ended) return;
        ended = true;
        this.#held.delete(address);
        if (!state.stopped) setTimeout(connect, RETRY_MS).unref();
      };
      stream.on('data', (ev: KvEvent) => {
        const why = this.#apply(address, ev, maxBlocks());
        if (why) {
          this.#log.warn({ address, why }, 'bad KV event; the worker is dropped from the index until it reconnects');
          stream.cancel();
          retry();
        }
      });
      stream.on('error', retry);
      stream.on('end', retry);
    };
    connect();
  }

  /** Stops following a worker and forgets what it held (it was removed). */
  unwatch(address: string): void {
    this.#streams.get(address)?.cancel();
    this.#streams.delete(address);
    this.#held.delete(address);
  }

  close(): void {
    for (const address of [...this.#streams.keys()]) this.unwatch(address);
  }

  /** Applies one event; a reason when it is malformed (nothing of it is applied then). */
  #apply(address: string, ev: KvEvent, maxBlocks: number): string | undefined {
    const limit = Math.min(MAX_EVENT_HASHES, maxBlocks > 0 ? maxBlocks : MAX_EVENT_HASHES);
    if (ev.salt === '') {
      this.#held.delete(address); // its prefix cache is off
      return undefined;
    }
    if (!HASH_PATTERN.test(ev.salt)) return 'salt is not 32 hex digits';
    if (!Number.isInteger(ev.tokensPerBlock) || ev.tokensPerBlock < 1 || ev.tokensPerBlock > MAX_TOKENS_PER_BLOCK) return 'bad tokens per block';
    if (ev.stored.length > limit || ev.evicted.length > limit) return `more than ${limit} hashes in one event`;
    if (!ev.stored.every((h) => HASH_PATTERN.test(h)) || !ev.evicted.every((h) => HASH_PATTERN.test(h))) return 'a hash is not 32 hex digits';
    let h = this.#held.get(address);
    if (ev.snapshot || !h || h.salt !== ev.salt || h.tokensPerBlock !== ev.tokensPerBlock) {
      h = { salt: ev.salt, tokensPerBlock: ev.tokensPerBlock, hashes: new Set() };
      this.#held.set(address, h);
    }
    for (const hash of ev.evicted) h.hashes.delete(hash);
    for (const hash of ev.stored) h.hashes.add(hash);
    if (h.hashes.size > limit) {
      this.#held.delete(address);
      return `more entries than its pool has blocks (${limit})`;
    }
    return undefined;
  }
}
