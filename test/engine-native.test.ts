// The engine's C++ suite (GoogleTest: GGUF parsing of malformed files, dequantization against ggml's
// reference kernels, the forward pass, the paged KV pool), built with warnings as errors and run from here
// so that `npm test` covers it. Needs libgtest-dev (scripts/setup.sh installs it).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const root = fileURLToPath(new URL('..', import.meta.url));
// Under `npm run test:asan` the C++ suite is built with ASan + UBSan too (it links the runtime itself, so the
// preload meant for node is kept away from cmake, the compiler and the test binary).
const sanitize = process.env.KVF_SANITIZE_ENGINE === '1';
const build = join(root, sanitize ? 'build-engine-asan' : 'build-engine');
const { LD_PRELOAD: _preload, ...env } = process.env;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { cwd: root, env, encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')} failed:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

test('engine C++ tests (GoogleTest)', { timeout: 15 * 60_000 }, (t) => {
  const type = sanitize ? ['-DCMAKE_BUILD_TYPE=Debug', '-DKVF_SANITIZE=ON'] : ['-DCMAKE_BUILD_TYPE=Release'];
  run('cmake', ['-S', '.', '-B', build, ...type, '-DKVF_BUILD_TESTS=ON', '-DKVF_WERROR=ON']);
  run('cmake', ['--build', build, '-j2', '--target', 'engine_tests']);
  // The long-context forward passes (thousands of positions, bit-for-bit across thread counts) take most of an hour
  // in a Debug build with sanitizers; the Release run covers them, and the attention kernels' own tests (attention
  // buffers, every ISA) run sanitized.
  const filter = sanitize ? ['--gtest_filter=-LongContext.*'] : [];
  const out = run(join(build, 'engine_tests'), ['--gtest_brief=1', ...filter]);
  // gtest's status tags are fixed-width, spaces included.
  /* eslint-disable no-regex-spaces */
  const summary = out.split('\n').filter((l) => /^\[(==========|  PASSED  |  SKIPPED |  FAILED  )\]/.test(l));
  for (const line of summary) t.diagnostic(line);
  assert.match(out, /\[  PASSED  \]/);
  /* eslint-enable no-regex-spaces */
});
