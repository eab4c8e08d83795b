// Generation end to end: tokenizer + chat template + reference engine + sampling. The tiny model checks the
// mechanics; SmolLM2 (when fetched with `npm run fetch-model`) must answer in coherent English.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { ChatTemplate } from '../src/engine/chat-template.js';
import { ReferenceEngine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { readGgufMetadata } from '../src/engine/gguf-metadata.js';
import { Tokenizer } from '../src/engine/tokenizer.js';

async function load(modelPath: string, blocks: number) {
  const meta = await readGgufMetadata(modelPath);
  const tokenizer = Tokenizer.fromGguf(meta);
  const template = ChatTemplate.fromGguf(meta);
  const tokensPerBlock = 16;
  const pool = new Uint8Array(blocks * ReferenceEngine.blockBytes(modelPath, { tokensPerBlock }));
  const engine = new ReferenceEngine({ modelPath, pool, tokensPerBlock, threads: 2 });
  return { tokenizer, template, engine };
}

describe('tiny model', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kvf-gen-'));
  const modelPath = join(dir, 'tiny.gguf');
  execFileSync(process.execPath, ['scripts/make-tiny-model.mjs', modelPath]);

  test('max tokens, determinism per seed, streaming pieces add up, blocks returned', async () => {
    const { tokenizer, template, engine } = await load(modelPath, 16);
    const prompt = template.encode(tokenizer, [{ role: 'user', content: 'hello there' }]);
    const free = engine.freeBlockCount;
    const pieces: string[] = [];
    const a = await generate(engine, tokenizer, prompt, { maxTokens: 20, temperature: 0.8, seed: 3, onText: (t) => pieces.push(t) });
    const b = await generate(engine, tokenizer, prompt, { maxTokens: 20, temperature: 0.8, seed: 3 });
    assert.ok(a.tokens.length <= 20);
    assert.deepEqual(a.tokens, b.tokens);
    assert.equal(pieces.join(''), a.text);
    assert.equal(engine.freeBlockCount, free);
    const greedy = await generate(engine, tokenizer, prompt, { maxTokens: 20 });
    if (greedy.text.length > 2) {
      const stop = greedy.text.slice(1, 3);
      const cut = await generate(engine, tokenizer, prompt, { maxTokens: 20, stop: [stop] });
      assert.equal(cut.finishReason, 'stop');
      assert.equal(cut.text, greedy.text.slice(0, greedy.text.indexOf(stop)));
    }
    await engine.close();
  });
});

const smol = join(process.env.KVF_MODEL_CACHE ?? join(homedir(), '.cache', 'kvfabric', 'models'), 'SmolLM2-135M-Instruct.Q4_1.gguf');
const skipSmol = !existsSync(smol)
  ? 'model not fetched (npm run fetch-model)'
  : process.env.KVF_SANITIZE_ENGINE === '1'
    ? 'too slow in the unoptimised sanitizer build; the sanitized C++ suite runs SmolLM2'
    : false;
describe('SmolLM2-135M-Instruct', { skip: skipSmol }, () => {
  // Not "What is the capital of France?": under the default system prompt llama.cpp itself answers that one
  // greedily with "L'Étoile, la Marseillaise, …" (its top first token is "L", p 0.157 vs "The" 0.123), and so
  // does this engine since it quantizes activations as llama.cpp does; both answer this phrasing with
  // "The capital of France is Paris." (benchmarks/crosscheck/llama-cpp/README.md).
  const cases = [
    { question: 'Tell me the capital of France.', expect: /Paris/ },
    { question: 'What color is the sky on a clear day?', expect: /blue/i },
    { question: 'What is the largest ocean on Earth?', expect: /Pacific/ },
  ];
  test('answers chat prompts in coherent English', { timeout: 120_000 }, async (t) => {
    const { tokenizer, template, engine } = await load(smol, 64);
    for (const c of cases) {
      const prompt = template.encode(tokenizer, [{ role: 'user', content: c.question }]);
      const out = await generate(engine, tokenizer, prompt, { maxTokens: 48 });
      t.diagnostic(`${c.question} -> ${JSON.stringify(out.text)}`);
      assert.match(out.text, c.expect);
    }
    await engine.close();
  });
});
