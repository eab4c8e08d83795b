import assert from 'node:assert/strict';
import { test } from 'node:test';

import { KvfError } from '../src/common/errors.js';
import { Sampler, argmax, checkStop } from '../src/engine/sampling.js';

const logits = Float32Array.from([0.1, 2.5, -1, 2.4, 0.3]);

test('greedy picks the argmax', () => {
  assert.equal(argmax(logits), 1);
  assert.equal(new Sampler().sample(logits), 1);
  assert.equal(new Sampler({ temperature: 0, seed: 9 }).sample(logits), 1);
});

test('same seed, same tokens; top-k 1 is greedy; top-k limits the choice', () => {
  const draw = (seed: number, opts = {}) => {
    const s = new Sampler({ temperature: 1, seed, ...opts });
    return Array.from({ length: 50 }, () => s.sample(logits));
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(1), draw(2));
  assert.ok(draw(3, { topK: 1 }).every((t) => t === 1));
  assert.ok(draw(4, { topK: 2 }).every((t) => t === 1 || t === 3));
  assert.ok(new Set(draw(5, { topK: 2 })).size === 2);
});

test('top-p keeps the smallest set that reaches p', () => {
  const peaked = Float32Array.from([10, 0, 0, 0]);
  const s = new Sampler({ temperature: 1, topP: 0.5, seed: 1 });
  for (let i = 0; i < 20; i++) assert.equal(s.sample(peaked), 0);
  const flat = Float32Array.from([1, 1, 1, 1]);
  const t = new Sampler({ temperature: 1, topP: 0.5, seed: 1 });
  const seen = new Set(Array.from({ length: 200 }, () => t.sample(flat)));
  assert.deepEqual([...seen].sort(), [0, 1]);
});

test('temperature sharpens and flattens the distribution', () => {
  const count = (temperature: number) => {
    const s = new Sampler({ temperature, seed: 7 });
    return Array.from({ length: 2000 }, () => s.sample(logits)).filter((t) => t === 1).length;
  };
  assert.ok(count(0.1) > count(2));
});

test('bad options are coded errors', () => {
  for (const o of [{ temperature: -1 }, { topK: 1.5 }, { topP: 0 }, { topP: 1.5 }, { seed: 0.5 }]) {
    assert.throws(
      () => new Sampler(o),
      (e: KvfError) => e instanceof KvfError && e.code === 'KVF_ERR_INVALID_ARGUMENT',
    );
  }
});

test('stop sequences cut the text and hold back possible prefixes', () => {
  assert.deepEqual(checkStop('Hello world', ['wor']), { emit: 'Hello ', stopped: true, pending: 0 });
  assert.deepEqual(checkStop('Hello wo', ['world']), { emit: 'Hello ', stopped: false, pending: 2 });
  assert.deepEqual(checkStop('abc', ['x', 'bcd']), { emit: 'a', stopped: false, pending: 2 });
  assert.deepEqual(checkStop('a\n\nb', ['\n\n', 'b']), { emit: 'a', stopped: true, pending: 0 });
  assert.deepEqual(checkStop('plain', []), { emit: 'plain', stopped: false, pending: 0 });
});
