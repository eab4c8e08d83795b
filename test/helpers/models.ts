// Where the suites find SmolLM2: the same path `kvfabric serve` uses (KVF_MODEL_CACHE, else ~/.cache/kvfabric/models),
// in a module light enough for the pure-TypeScript suites (no serving stack, no addon).
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { modelCacheDir, SMOLLM2_FILE } from '../../src/serve/default-model.js';

export const SMOLLM2 = join(modelCacheDir(), SMOLLM2_FILE);
export const HAVE_SMOLLM2 = existsSync(SMOLLM2);
