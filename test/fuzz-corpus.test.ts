// Replays the fuzzers' corpora (fuzz/corpus/<target>/: seeds, and every crash a fuzzer found, kept as a
// regression test) through the same target functions `npm run fuzz` runs, without jazzer.js or libFuzzer:
// each input must be accepted or refused with a KvfError of a registered code (docs/errors.md).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { isRefusal, type Check } from '../fuzz/targets/common.js';
import * as gguf from '../fuzz/targets/gguf.js';
import * as http from '../fuzz/targets/http.js';
import * as kvHandle from '../fuzz/targets/kv-handle.js';
import * as metadata from '../fuzz/targets/metadata.js';
import { fromNative } from '../src/common/errors.js';
import { isErrorCode } from '../src/common/error-registry.js';
import { addon } from '../src/common/addon.js';

const FUZZ = fileURLToPath(new URL('../fuzz', import.meta.url));
const inputs = (target: string): string[] => {
  const dir = join(FUZZ, 'corpus', target);
  return existsSync(dir)
    ? readdirSync(dir)
        .sort()
        .map((f) => join(dir, f))
    : [];
};
const name = (path: string): string => path.slice(FUZZ.length + '/corpus/'.length);

const targets: [string, Check][] = [
  ['metadata', metadata.check],
  ['kv-handle', kvHandle.check],
  ['gguf', gguf.check],
  ['http', http.check],
];

describe('fuzz corpus replay', () => {
  after(() => http.close());

  for (const [target, check] of targets) {
    test(`${target}: every corpus input is accepted or refused with a registered KvfError`, async () => {
      const files = inputs(target);
      assert.ok(files.length > 0, `fuzz/corpus/${target} is empty`);
      for (const file of files) {
        try {
          await check(readFileSync(file));
        } catch (err) {
          assert.ok(isRefusal(err), `${name(file)}: ${(err as Error)?.stack ?? String(err)}`);
        }
      }
    });
  }

  // The C++ GGUF fuzzer's inputs go through the addon's own model loader (Model::Load + KvLayoutFor).
  test('gguf-native: the addon loads each input as a model or refuses it with KVF_ERR_BAD_MODEL / UNSUPPORTED_TENSOR_TYPE', () => {
    for (const file of inputs('gguf-native')) {
      try {
        addon.NativeEngine.blockBytes(file, 16, false);
      } catch (err) {
        const e = fromNative(err);
        assert.ok(isErrorCode((err as { code?: unknown }).code), `${name(file)}: ${String(err)}`);
        assert.ok(['KVF_ERR_BAD_MODEL', 'KVF_ERR_UNSUPPORTED_TENSOR_TYPE'].includes(e.code), `${name(file)}: ${e.code} ${e.message}`);
      }
    }
  });

  // The notification decoder has no way in from JS but the fabric; its corpus runs through the libFuzzer
  // binary when `npm run fuzz` has built it (it needs clang).
  const notificationFuzzer = join(FUZZ, 'build', 'notification-native');
  test(
    'notification-native: the libFuzzer binary replays its corpus',
    { skip: existsSync(notificationFuzzer) ? false : 'fuzz/build/notification-native not built (npm run fuzz builds it)' },
    () => {
      // Its own (clang) ASan runtime: not the sanitizer run's preloaded gcc one, which it refuses to start with.
      const { LD_PRELOAD: _preload, ...env } = process.env;
      const r = spawnSync(notificationFuzzer, inputs('notification-native'), { encoding: 'utf8', env });
      assert.equal(r.status, 0, r.stderr.slice(-4000));
    },
  );
});
