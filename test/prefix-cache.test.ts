// The prefix cache on its own and over the real engine: chained hashes that name the whole prefix (and differ
// between models and layouts), reference counts that keep blocks in use from eviction, least-recently-used
// eviction, and a prompt run from its first uncached position giving the very logits of a run from scratch.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { ReferenceEngine } from '../src/engine/engine.js';
import type { KvGeometry } from '../src/kv/layout.js';
import { blockHashes, HASH_PATTERN, PrefixCache, prefixSalt, reusableBlocks } from '../src/kv/prefix-cache.js';
import { tinyModel } from './helpers/serve.js';

const GEOMETRY: KvGeometry = { numLayers: 2, kvHeads: 2, headDim: 16, tokensPerBlock: 4, dtype: 'f16' };
const MODEL = { name: 'tiny', layers: 2, embedding: 64, heads: 4, vocab: 300 };
const SALT = prefixSalt(MODEL, GEOMETRY);
const tokens = (n: number, from = 1): number[] => Array.from({ length: n }, (_, i) => from + i);

function cache(evicted: number[][] = []): PrefixCache {
  return new PrefixCache({ salt: SALT, tokensPerBlock: 4, evict: (blocks) => evicted.push(blocks) });
}

describe('block hashes', () => {
  test('are 128-bit, one per full block, and chained: a block hash names every token before it', () => {
    const h = blockHashes(SALT, tokens(11), 4);
    assert.equal(h.length, 2);
    assert.ok(h.every((x) => HASH_PATTERN.test(x)));
    // Same second block, another first block: the second hash differs too.
    const other = blockHashes(SALT, [9, ...tokens(7, 2)], 4);
    assert.notEqual(other[0], h[0]);
    assert.notEqual(other[1], h[1]);
    assert.deepEqual(blockHashes(SALT, tokens(8), 4), h);
    assert.deepEqual(blockHashes(SALT, tokens(12), 4, 1), [h[0]]);
  });

  test('differ between models and between KV layouts, so such workers never match', () => {
    const base = blockHashes(SALT, tokens(8), 4);
    const salts = [
      prefixSalt({ ...MODEL, name: 'other' }, GEOMETRY),
      prefixSalt({ ...MODEL, layers: 3 }, GEOMETRY),
      prefixSalt(MODEL, { ...GEOMETRY, dtype: 'f32' }),
      prefixSalt(MODEL, { ...GEOMETRY, kvHeads: 1 }),
    ];
    for (const salt of salts) {
      assert.notEqual(salt, SALT);
      const theirs = blockHashes(salt, tokens(8), 4);
      assert.ok(theirs.every((x) => !base.includes(x)));
    }
    // Another block size cuts the same tokens into other blocks.
    assert.notEqual(prefixSalt(MODEL, { ...GEOMETRY, tokensPerBlock: 8 }), SALT);
  });

  test('only blocks before the last prompt token may be reused: it is always computed', () => {
    assert.equal(reusableBlocks(0, 4), 0);
    assert.equal(reusableBlocks(4, 4), 0);
    assert.equal(reusableBlocks(5, 4), 1);
    assert.equal(reusableBlocks(8, 4), 1);
    assert.equal(reusableBlocks(9, 4), 2);
  });
});

describe('the cache', () => {
  test('shares a block by reference; release keeps it cached and idle; a hash or block already cached is not taken twice', () => {
    const c = cache();
    const [h0, h1] = blockHashes(SALT, tokens(8), 4);
    assert.equal(c.insert(h0!, 5), true);
    assert.equal(c.insert(h0!, 6), false, 'the same prefix computed twice: the second block stays its request’s own');
    assert.equal(c.insert(h1!, 5), false, 'a block under two hashes');
    assert.deepEqual(c.acquire([h0!, h1!]), [5], 'the leading cached run only');
    assert.equal(c.evictable, 0);
    assert.equal(c.release(5), true);
    assert.equal(c.evictable, 0, 'one reference left');
    assert.equal(c.release(5), true);
    assert.equal(c.evictable, 1);
    assert.equal(c.release(7), false, 'not cached: the caller frees it');
    assert.throws(() => c.release(5), /released more often/);
    assert.deepEqual(c.stats, { blocks: 1, idle: 1, lookups: 2, hits: 1, evictions: 0 });
  });

  test('eviction under pressure never frees a block in use, and takes the least recently used first', () => {
    const evicted: number[][] = [];
    const c = cache(evicted);
    const hashes = blockHashes(SALT, tokens(16), 4);
    hashes.forEach((h, i) => c.insert(h, 10 + i));
    // Blocks 10 and 11 stay in use; 13 goes idle before 12.
    c.release(13);
    c.release(12);
    assert.equal(c.evict(100), 2, 'only the idle blocks, however many are asked for');
    assert.deepEqual(evicted, [[13, 12]]);
    assert.equal(c.matched(hashes), 2);
    assert.deepEqual(c.acquire(hashes), [10, 11]);
    assert.equal(c.evict(100), 0);
    assert.equal(c.has(10) && c.has(11), true);
  });

  test('a taken idle block is no longer evictable', () => {
    const c = cache();
    const [h0] = blockHashes(SALT, tokens(4), 4);
    c.insert(h0!, 3);
    c.release(3);
    assert.deepEqual(c.acquire([h0!]), [3]);
    assert.equal(c.evict(1), 0);
  });
});

describe('a prompt run from its first uncached position over the real engine', () => {
  test('gives the logits of a run from scratch, and never writes the shared blocks', async () => {
    const model = tinyModel();
    const tpb = 16;
    const engine = new ReferenceEngine({
      modelPath: model,
      pool: new Uint8Array(32 * ReferenceEngine.blockBytes(model, { tokensPerBlock: tpb })),
      tokensPerBlock: tpb,
      threads: 1,
    });
    try {
      const first = Array.from({ length: 40 }, (_, i) => 3 + ((i * 37) % 290));
      const second = [...first.slice(0, 32), ...Array.from({ length: 21 }, (_, i) => 5 + ((i * 11) % 290))];
      const a = engine.allocateBlocks(3);
      await engine.prefill(first, a, 0);
      // The second prompt shares the first two blocks (32 tokens) and computes the rest in its own blocks.
      const shared = a.slice(0, 2);
      assert.ok(reusableBlocks(second.length, tpb) >= 2);
      const own = engine.allocateBlocks(2);
      const reused = await engine.prefill(second.slice(32), [...shared, ...own], 32);
      const scratch = engine.allocateBlocks(4);
      const full = await engine.prefill(second, scratch, 0);
      assert.deepEqual(reused, full);
      // The shared blocks still hold the first prompt's K/V: its continuation is unchanged.
      const again = engine.allocateBlocks(3);
      await engine.prefill(first, again, 0);
      assert.deepEqual(await engine.decode(7, a, 40), await engine.decode(7, again, 40));
    } finally {
      await engine.close();
    }
  });
});
