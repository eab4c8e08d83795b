#!/usr/bin/env node
// Runs the test suite with node's built-in runner (Node 20 has no glob support in --test, so files are
// listed here). Brings the addon and dist/ up to date first (both builds are incremental, so this costs
// seconds), so tests never run against stale builds.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const nativeOnly = args.includes('--native-only');
const files = args.filter((a) => !a.startsWith('--'));

function run(cmd, cmdArgs) {
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

if (!process.env.KVF_ADDON) {
  const r = spawnSync('npx', ['cmake-js', 'compile', '--CDKVF_WERROR=ON'], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) {
    process.stderr.write(r.stdout + r.stderr);
    process.exit(r.status ?? 1);
  }
}
run('npx', ['tsc', '-p', 'tsconfig.json']);

// Tests that exercise only TypeScript (no addon) are skipped under the sanitizer build.
const PURE_TS = new Set([
  'metadata.test.ts',
  'stage-protocol.test.ts',
  'errors-registry.test.ts',
  'limits.test.ts',
  'config.test.ts',
  'sampling.test.ts',
  'tokenizer.test.ts',
  'kv-plan.test.ts',
  'manifests.test.ts',
  'dockerfile.test.ts',
]);
const selected =
  files.length > 0
    ? files
    : readdirSync(join(root, 'test'))
        .filter((f) => f.endsWith('.test.ts'))
        .filter((f) => !nativeOnly || !PURE_TS.has(f))
        .sort()
        .map((f) => join('test', f));

const r = spawnSync(process.execPath, ['--import', 'tsx', '--test', '--test-reporter=spec', ...selected], {
  cwd: root,
  stdio: 'inherit',
  // KVF_FAST_PATH=0: the suites test the libfabric providers between processes on one host, where the
  // same-host fast path would otherwise carry every byte; test/fast-path.test.ts turns it on explicitly.
  env: { ...process.env, KVF_LOG_LEVEL: process.env.KVF_LOG_LEVEL ?? 'warn', KVF_FAST_PATH: process.env.KVF_FAST_PATH ?? '0' },
});
process.exit(r.status ?? 1);
