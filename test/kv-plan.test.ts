// Transfer planning for paged KV and block leases: pure logic, checked against a byte-level simulation.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { BlockLeases } from '../src/kv/leases.js';
import { blockBytesOf, kvBytesFor, planKvCopy, type KvGeometry } from '../src/kv/plan.js';
import { prng } from './helpers/random.js';

const layout: KvGeometry = { numLayers: 3, kvHeads: 2, headDim: 4, tokensPerBlock: 5, dtype: 'f16' };
const elem = 2;

/** Byte offset of (block, layer, kv, head, slot) in a pool: the layout of native/engine/kv_cache.h. */
function at(block: number, layer: number, kv: number, head: number, slot: number): number {
  const row = layout.headDim * elem;
  return block * blockBytesOf(layout) + ((layer * 2 + kv) * layout.kvHeads + head) * layout.tokensPerBlock * row + slot * row;
}

describe('planKvCopy', () => {
  test('moves exactly the first `tokens` positions of every layer, K and V, head — and nothing else', () => {
    const rand = prng(7);
    const blockBytes = blockBytesOf(layout);
    for (const tokens of [0, 1, 4, 5, 6, 10, 11, 23]) {
      const nBlocks = Math.ceil(tokens / layout.tokensPerBlock);
      const src = [7, 2, 3, 9, 0].slice(0, nBlocks);
      const dst = [1, 2, 5, 6, 4].slice(0, nBlocks);
      const from = Uint8Array.from({ length: 10 * blockBytes }, () => Math.floor(rand() * 256));
      const to = new Uint8Array(10 * blockBytes);
      const ranges = planKvCopy(layout, src, dst, tokens);
      for (const r of ranges) to.set(from.subarray(r.srcOffset, r.srcOffset + r.length), r.dstOffset);
      assert.equal(ranges.reduce((s, r) => s + r.length, 0), kvBytesFor(layout, tokens));
      const expected = new Uint8Array(to.length);
      for (let p = 0; p < tokens; p++) {
        const b = Math.floor(p / layout.tokensPerBlock);
        const slot = p % layout.tokensPerBlock;
        for (let l = 0; l < layout.numLayers; l++)
          for (let kv = 0; kv < 2; kv++)
            for (let h = 0; h < layout.kvHeads; h++) {
              const s = at(src[b]!, l, kv, h, slot);
              expected.set(from.subarray(s, s + layout.headDim * elem), at(dst[b]!, l, kv, h, slot));
            }
      }
      assert.deepEqual(to, expected, `${tokens} tokens`);
    }
  });

  test('merges runs of consecutive blocks on both sides', () => {
    const ranges = planKvCopy(layout, [4, 5, 6, 1, 2], [8, 9, 10, 12, 13], 25);
    assert.deepEqual(
      ranges.map((r) => r.length / blockBytesOf(layout)),
      [3, 2],
    );
  });

  test('refuses block tables too short for the tokens', () => {
    assert.throws(() => planKvCopy(layout, [1], [2, 3], 6), { code: 'KVF_ERR_INVALID_ARGUMENT' });
    assert.throws(() => planKvCopy(layout, [1], [2], -1), { code: 'KVF_ERR_INVALID_ARGUMENT' });
  });
});

describe('BlockLeases', () => {
  test('hold, take, release and expiry each return blocks exactly once', async () => {
    const freed: number[][] = [];
    const expired: string[] = [];
    const leases = new BlockLeases((b) => freed.push(b), (id) => expired.push(id));
    leases.hold('a', [1, 2], 60_000);
    leases.hold('b', [3], 60_000);
    leases.hold('c', [4], 20);
    assert.throws(() => leases.hold('a', [5], 10), { code: 'KVF_ERR_INVALID_ARGUMENT' });
    assert.deepEqual(leases.take('b'), [3]);
    assert.equal(leases.take('b'), undefined);
    assert.equal(leases.release('a'), true);
    assert.equal(leases.release('a'), false);
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(freed, [[1, 2], [4]]);
    assert.deepEqual(expired, ['c']);
    assert.equal(leases.size, 0);
  });
});
