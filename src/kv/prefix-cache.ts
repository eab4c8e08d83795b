// The prefix cache of a worker's KV pool: full blocks named by a hash chained over every token before and in them,
// shared read-only by the requests whose prompts start with those tokens, reference-counted, and kept after their
// last request ends until the pool needs room (least recently used first).
//
// Hash: the first 16 bytes of SHA-256(parent hash ‖ the block's token ids as int32 LE), where the first block's
// parent is the salt: SHA-256 of the model's identity and the KV geometry. A 128-bit chained hash names the whole
// prefix, not only the block's own tokens, so a match means every earlier token matched too (a collision would
// need 2^64 work at least); workers of another model or layout never match, their salt differs.
import { createHash } from 'node:crypto';

import { KvfError } from '../common/errors.js';
import type { KvGeometry } from './layout.js';

/** A block hash on the wire and in the router's index: 32 lowercase hex digits (128 bits). */
export const HASH_PATTERN = /^[0-9a-f]{32}$/;

/** What names a model's K/V: the served name and the model's shape, which decide every byte of a block. */
export interface ModelIdentity {
  name: string;
  layers: number;
  embedding: number;
  heads: number;
  vocab: number;
}

/** The chain's root for a model and KV geometry (32 hex digits, like a block hash). */
export function prefixSalt(model: ModelIdentity, layout: KvGeometry): string {
  const identity = ['kvfabric-prefix-v1', model.name, model.layers, model.embedding, model.heads, model.vocab];
  const geometry = [layout.numLayers, layout.kvHeads, layout.headDim, layout.tokensPerBlock, layout.dtype];
  return createHash('sha256')
    .update(JSON.stringify([identity, geometry]))
    .digest('hex')
    .slice(0, 32);
}

/** The chained hashes of the full blocks among `tokens` (at most `maxBlocks` of them). */
export function blockHashes(salt: string, tokens: readonly number[], tokensPerBlock: number, maxBlocks = Infinity): string[] {
  const count = Math.min(Math.floor(tokens.length / tokensPerBlock), maxBlocks);
  const out: string[] = [];
  let parent = Buffer.from(salt, 'hex');
  const ids = new Int32Array(tokensPerBlock);
  for (let i = 0; i < count; i++) {
    for (let j = 0; j < tokensPerBlock; j++) ids[j] = tokens[i * tokensPerBlock + j]!;
    parent = createHash('sha256').update(parent).update(Buffer.from(ids.buffer)).digest().subarray(0, 16);
    out.push(parent.toString('hex'));
  }
  return out;
}

/**
 * Blocks a prompt may take from the cache: the full blocks strictly before the block of its last token, which is
 * always computed (its logits give the first generated token) and so must be the request's own.
 */
export function reusableBlocks(promptTokens: number, tokensPerBlock: number): number {
  return promptTokens > 0 ? Math.floor((promptTokens - 1) / tokensPerBlock) : 0;
}

interface Entry {
  hash: string;
  block: number;
  refs: number;
}

export interface PrefixCacheOptions {
  salt: string;
  tokensPerBlock: number;
  /** Returns evicted blocks to the pool (cleared): they hold no request's K/V any more. */
  evict: (blocks: number[]) => void;
  /** Told of hashes stored and evicted (the worker's KV events). */
  onStored?: (hashes: string[]) => void;
  onEvicted?: (hashes: string[]) => void;
}

/** What the cache did since the worker started, for /health and the benchmark. */
export interface PrefixCacheStats {
  /** Blocks cached now, and those of them no request uses (evictable). */
  blocks: number;
  idle: number;
  /** Prompt blocks looked up, and found. */
  lookups: number;
  hits: number;
  evictions: number;
}

export class PrefixCache {
  readonly salt: string;
  readonly tokensPerBlock: number;
  readonly #options: PrefixCacheOptions;
  readonly #byHash = new Map<string, Entry>();
  readonly #byBlock = new Map<number, Entry>();
  // Entries no request uses, least recently used first (Map keeps insertion order).
  readonly #idle = new Map<number, Entry>();
  #lookups = 0;
  #hits = 0;
  #evictions = 0;

  constructor(options: PrefixCacheOptions) {
    if (!HASH_PATTERN.test(options.salt)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'the prefix salt must be 32 hex digits');
    this.salt = options.salt;
    this.tokensPerBlock = options.tokensPerBlock;
    this.#options = options;
  }

  get stats(): PrefixCacheStats {
    return { blocks: this.#byHash.size, idle: this.#idle.size, lookups: this.#lookups, hits: this.#hits, evictions: this.#evictions };
  }

  /** Blocks eviction can return to the pool now. */
  get evictable(): number {
    return this.#idle.size;
  }

  /** Every hash cached now (the snapshot a KV event stream starts with). */
  hashes(): string[] {
    return [...this.#byHash.keys()];
  }

  hashesOf(tokens: readonly number[], maxBlocks = Infinity): string[] {
    return blockHashes(this.salt, tokens, this.tokensPerBlock, maxBlocks);
  }

  /** How many leading blocks of `hashes` are cached (without taking them). */
  matched(hashes: readonly string[]): number {
    let n = 0;
    while (n < hashes.length && this.#byHash.has(hashes[n]!)) n++;
    return n;
  }

  /**
   * The cached blocks of the longest cached leading run of `hashes`, each with one more reference: the caller
   * reads them and must never write them, and gives each reference back with release().
   */
  acquire(hashes: readonly string[]): number[] {
    const blocks: number[] = [];
    for (const hash of hashes) {
      const e = this.#byHash.get(hash);
      if (!e) break;
      if (e.refs++ === 0) this.#idle.delete(e.block);
      blocks.push(e.block);
    }
    this.#lookups += hashes.length;
    this.#hits += blocks.length;
    return blocks;
  }

  /**
   * Caches a full block its request has finished writing, under its chained hash; the request keeps one reference.
   * False (nothing changes) when the hash is cached already, or the block is: the request's block stays its own.
   */
  insert(hash: string, block: number): boolean {
    if (this.#byHash.has(hash) || this.#byBlock.has(block)) return false;
    const e = { hash, block, refs: 1 };
    this.#byHash.set(hash, e);
    this.#byBlock.set(block, e);
    this.#options.onStored?.([hash]);
    return true;
  }

  /** True when each of `blocks` is cached under the hash at the same place in `hashes` (and as many). */
  holds(hashes: readonly string[], blocks: readonly number[]): boolean {
    return hashes.length === blocks.length && blocks.every((b, i) => this.#byBlock.get(b)?.hash === hashes[i]);
  }

  /** True when the block is cached (shared, read-only). */
  has(block: number): boolean {
    return this.#byBlock.has(block);
  }

  /**
   * Gives back one reference to a block; a cached block nobody uses stays cached, most recently used last. False
   * when the block is not cached: the caller frees it.
   */
  release(block: number): boolean {
    const e = this.#byBlock.get(block);
    if (!e) return false;
    if (e.refs <= 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `cached block ${block} released more often than taken`);
    if (--e.refs === 0) this.#idle.set(block, e);
    return true;
  }

  /** Returns up to `count` idle blocks to the pool, least recently used first; the number returned. */
  evict(count: number): number {
    const blocks: number[] = [];
    const hashes: string[] = [];
    for (const e of this.#idle.values()) {
      if (blocks.length >= count) break;
      blocks.push(e.block);
      hashes.push(e.hash);
    }
    for (const [i, b] of blocks.entries()) {
      this.#idle.delete(b);
      this.#byBlock.delete(b);
      this.#byHash.delete(hashes[i]!);
    }
    if (blocks.length === 0) return 0;
    this.#evictions += blocks.length;
    this.#options.evict(blocks);
    this.#options.onEvicted?.(hashes);
    return blocks.length;
  }
}
