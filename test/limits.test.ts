// Limits that TypeScript and the addon both enforce are written once per language; this keeps the two
// definitions equal by reading the C++ sources (as test/errors-registry.test.ts does for error codes).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { MAX_BUSY_POLL_US } from '../src/fabric/config.js';
import { METADATA_LIMITS } from '../src/fabric/metadata.js';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The value of `constexpr <type> name = <number>;` in a native source (digit separators and a `.0` allowed). */
function constant(file: string, name: string): number {
  const source = readFileSync(join(root, 'native', file), 'utf8');
  const found = [...source.matchAll(new RegExp(`constexpr\\s+[\\w:]+\\s+${name}\\s*=\\s*([0-9']+(?:\\.0)?)\\s*;`, 'g'))];
  assert.equal(found.length, 1, `native/${file} defines ${name} once`);
  return Number(found[0]![1]!.replace(/'/g, ''));
}

/** Native sources (path under native/ → text), to check that a bound is not written out a second time. */
function nativeSources(): Map<string, string> {
  const out = new Map<string, string>();
  for (const dir of ['core', 'binding', 'engine']) {
    for (const f of readdirSync(join(root, 'native', dir))) {
      if (f.endsWith('.cc') || f.endsWith('.h')) out.set(`${dir}/${f}`, readFileSync(join(root, 'native', dir, f), 'utf8'));
    }
  }
  return out;
}

test('2^53 is written only in native/binding/js_number.h', () => {
  for (const [path, text] of nativeSources()) {
    if (path === 'binding/js_number.h') continue;
    assert.doesNotMatch(text, /900719925474099[0-9]|1ull\s*<<\s*53/, `native/${path} spells out 2^53: use kMaxSafeInteger`);
  }
});

test('rails: kMaxRails (native/core/transfer.h) is METADATA_LIMITS.maxRails', () => {
  assert.equal(constant('core/transfer.h', 'kMaxRails'), METADATA_LIMITS.maxRails);
});

test('busy polling: kMaxBusyPollUs (native/core/agent.h) is MAX_BUSY_POLL_US', () => {
  assert.equal(constant('core/agent.h', 'kMaxBusyPollUs'), MAX_BUSY_POLL_US);
});

test('exact integers: kMaxSafeInteger (native/binding/js_number.h) is Number.MAX_SAFE_INTEGER', () => {
  assert.equal(constant('binding/js_number.h', 'kMaxSafeInteger'), Number.MAX_SAFE_INTEGER);
});
