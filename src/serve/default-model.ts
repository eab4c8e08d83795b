// The embedded default model of `kvfabric serve` and of workers started without --model: SmolLM2 when
// `npm run fetch-model` has fetched it, else the tiny deterministic test model (generated on first use).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

export const SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf';

export function modelCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.KVF_MODEL_CACHE || join(homedir(), '.cache', 'kvfabric', 'models');
}

export function tinyModelPath(): string {
  const path = join(ROOT, 'models', 'tiny-llama.gguf');
  if (!existsSync(path)) execFileSync(process.execPath, [join(ROOT, 'scripts', 'make-tiny-model.mjs'), path], { stdio: 'ignore' });
  return path;
}

export function defaultModelPath(env: NodeJS.ProcessEnv = process.env): string {
  const smol = join(modelCacheDir(env), SMOLLM2_FILE);
  return existsSync(smol) ? smol : tinyModelPath();
}
