// Transfer planning for paged KV and block leases: pure logic, checked against a byte-level simulation.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { BlockLeases } from '../src/kv/leases.js';
import { blockBytesOf, blockRuns, kvBytesFor, planKvCopy, rangesInRuns } from '../src/kv/plan.js';
import type { KvGeometry } from '../src/kv/layout.js';
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
      assert.equal(
        ranges.reduce((s, r) => s + r.length, 0),
        kvBytesFor(layout, tokens),
      );
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
    const leases = new BlockLeases({ free: (b) => freed.push(b), onExpire: (id) => expired.push(id) });
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

  test('access ends before the blocks go back, however the hold ends; without word from the peer they wait out the quarantine', async () => {
    const events: string[] = [];
    const leases = new BlockLeases({ free: (b) => events.push(`free ${b.join(',')}`), quarantineMs: 50 });
    const hold = (id: string, blocks: number[], ms = 60_000) => {
      leases.hold(id, blocks, ms);
      leases.bind(id, new Uint8Array([blocks[0]!]), () => events.push(`revoke ${id}`));
    };
    hold('done', [1]);
    hold('released', [2]);
    hold('expired', [3], 10);
    hold('taken', [4]);
    assert.equal(leases.matches('done', new Uint8Array([1])), true);
    assert.equal(leases.matches('done', new Uint8Array([2])), false);
    assert.equal(leases.release('done', true), true);
    assert.equal(leases.release('released'), true);
    assert.deepEqual(leases.take('taken'), [4]);
    assert.deepEqual(events, ['revoke done', 'free 1', 'revoke released', 'revoke taken']);
    assert.equal(leases.size, 2, 'one held, one in quarantine');
    await new Promise((r) => setTimeout(r, 40));
    assert.deepEqual(events.slice(4), ['revoke expired']);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(events.slice(5).sort(), ['free 2', 'free 3']);
    assert.equal(leases.size, 0);
  });

  test('leases are clamped below the timer limit: a huge one does not fire at once', async () => {
    const freed: number[][] = [];
    const leases = new BlockLeases({ free: (b) => freed.push(b) });
    const { expiresAt } = leases.hold('huge', [1], 2 ** 40);
    assert.ok(expiresAt - Date.now() > 2 ** 30);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(freed, []);
    leases.releaseAll();
    assert.deepEqual(freed, [[1]]);
  });
});

describe('block runs and grants', () => {
  test('runs are maximal ascending runs of ids, whatever the table order', () => {
    assert.deepEqual(blockRuns([2, 1, 0]), [{ start: 0, count: 3 }]);
    assert.deepEqual(blockRuns([7, 3, 4, 9, 8]), [
      { start: 3, count: 2 },
      { start: 7, count: 3 },
    ]);
    assert.deepEqual(blockRuns([]), []);
  });

  test('ranges re-addressed to runs cover the same bytes, split where a range crosses runs', () => {
    const blockBytes = blockBytesOf(layout);
    for (const [src, dst, tokens] of [
      [[2, 1, 0], [5, 6, 7], 14],
      [[7, 3, 4, 9, 8], [0, 1, 2, 3, 4], 23],
      [[0, 1, 2], [3, 4, 5], 15],
    ] as const) {
      const ranges = planKvCopy(layout, src, dst, tokens);
      for (const side of ['src', 'dst'] as const) {
        const runs = blockRuns(side === 'src' ? src : dst);
        const moved = rangesInRuns(ranges, side, runs, blockBytes);
        assert.equal(
          moved.reduce((n, r) => n + r.length, 0),
          kvBytesFor(layout, tokens),
        );
        for (const r of moved) assert.ok(r.runOffset + r.length <= runs[r.run]!.count * blockBytes, 'inside its run');
        // Back to pool offsets: the same byte pairs as the plan.
        const pairs = (list: { a: number; b: number; length: number }[]) =>
          list.flatMap((x) => Array.from({ length: x.length }, (_, i) => `${x.a + i}>${x.b + i}`)).sort();
        const plan = ranges.map((r) =>
          side === 'src' ? { a: r.srcOffset, b: r.dstOffset, length: r.length } : { a: r.dstOffset, b: r.srcOffset, length: r.length },
        );
        const back = moved.map((r) => ({ a: runs[r.run]!.start * blockBytes + r.runOffset, b: r.otherOffset, length: r.length }));
        assert.deepEqual(pairs(back), pairs(plan));
      }
    }
    assert.throws(() => rangesInRuns([{ srcOffset: 0, dstOffset: 0, length: 1 }], 'src', [{ start: 1, count: 1 }], blockBytes), {
      code: 'KVF_ERR_OUT_OF_RANGE',
    });
  });
});
