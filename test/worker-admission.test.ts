// Workers' own admission (src/serve/work-queue.ts), with real processes and a model slow enough to queue behind:
// a prompt that cannot be prefilled before its deadline at the worker's measured rate is refused at once, and a
// decode worker takes at most --max-streams streams; the client gets 429 with Retry-After while the admitted
// requests complete, and /health and /metrics show the queues.
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';

import { ReferenceEngine } from '../src/engine/engine.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { unary, workerClient } from '../src/serve/rpc.js';
import { AUTH, SLOW_MODEL_SHAPE, SLOW_MODEL_SKIP, health, poolAtBaseline, startStack, tinyModel, waitFor, type Stack } from './helpers/serve.js';

const model = tinyModel(SLOW_MODEL_SHAPE);
// About 1,400 tokens of the tiny model's vocabulary: on the order of a second of prefill.
const LONG_PROMPT = 'the quick brown fox jumps over the lazy dog; '.repeat(45);

interface Body {
  choices?: { text: string }[];
  error?: { code: string; message: string };
}

async function complete(stack: Stack, prompt: string | number[], maxTokens: number): Promise<{ status: number; retryAfter: string | null; body: Body }> {
  const res = await fetch(`${stack.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: stack.modelName, prompt, max_tokens: maxTokens, temperature: 0 }),
  });
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: (await res.json()) as Body };
}

/** How long this machine's engine takes to prefill `prompt`, as a worker would (one thread). */
async function prefillMs(prompt: string): Promise<number> {
  const tokens = await tokenize(prompt);
  const tokensPerBlock = 16;
  const blocks = Math.ceil(tokens.length / tokensPerBlock);
  const engine = new ReferenceEngine({
    modelPath: model,
    pool: new Uint8Array(ReferenceEngine.blockBytes(model, { tokensPerBlock }) * blocks),
    tokensPerBlock,
    threads: 1,
  });
  try {
    const table = engine.allocateBlocks(blocks);
    await engine.prefill(tokens, table, 0); // warm
    const t0 = performance.now();
    await engine.prefill(tokens, table, 0);
    return performance.now() - t0;
  } finally {
    await engine.close();
  }
}

async function tokenize(prompt: string): Promise<number[]> {
  return (await Tokenizer.fromFile(model)).encode(prompt);
}

/** Has the prefill worker measure its rate: one prefill without a deadline (through the frontend, a loaded machine could time it out). */
async function measureRate(stack: Stack): Promise<number> {
  const client = workerClient(stack.prefill.ready.address, AUTH);
  try {
    await unary(client, client.prefill, { requestId: 'warm-up', tokens: await tokenize(LONG_PROMPT), leaseMs: 1000 }, 120_000);
    await unary(client, client.release, { requestId: 'warm-up' }, 5000);
  } finally {
    client.close();
  }
  return (await health(stack.prefill.ready.address)).prefillTokensPerS;
}

describe('worker admission', { skip: SLOW_MODEL_SKIP }, () => {
  let stack: Stack | undefined;
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });

  test('a prompt that would miss its prefill deadline behind the queue is refused at once: 429, the admitted ones complete', async () => {
    // The deadline is 2.5 prompts' time on this machine, so whatever its speed, the last of eight concurrent
    // prompts cannot make it even if the worker runs three times as fast as the measurement here (load varies).
    const onePromptMs = await prefillMs(LONG_PROMPT);
    stack = await startStack(model, 'tcp', { prefillTimeoutMs: Math.round(2.5 * onePromptMs) }, { extra: ['--blocks', '800'] });
    assert.ok((await measureRate(stack)) > 0, 'the prefill rate is measured');

    const settled: string[] = [];
    const results = await Promise.all(
      [0, 1, 2, 3, 4, 5, 6, 7].map(async (i) => {
        const r = await complete(stack!, `${i} ${LONG_PROMPT}`, 1);
        settled.push(r.status === 200 ? 'done' : 'refused');
        return r;
      }),
    );
    const refused = results.filter((r) => r.status === 429);
    assert.ok(
      results.some((r) => r.status === 200),
      JSON.stringify(results.map((r) => r.body.error ?? r.status)),
    );
    assert.ok(refused.length >= 1, 'at least one prompt could not make its deadline behind the others');
    for (const r of refused) {
      assert.equal(r.body.error?.code, 'KVF_ERR_OVERLOADED');
      assert.match(r.body.error!.message, /prompt tokens are queued ahead/);
      assert.equal(r.retryAfter, '1');
    }
    // Refused before the admitted prompt was done, not after waiting for it.
    assert.equal(settled[0], 'refused');
    assert.ok(
      results.every((r) => r.status === 200 || r.status === 429),
      'no other failure',
    );
    await poolAtBaseline(stack.prefill.ready.address);
    assert.equal((await health(stack.prefill.ready.address)).queuedTokens, 0);
  });

  test('a decode worker beyond --max-streams refuses the next stream: 429 while the running one completes; /health shows it', async () => {
    stack = await startStack(model, 'tcp', {}, { extra: ['--blocks', '160', '--max-streams', '1'] });
    const long = complete(stack, 'the quick brown fox', 1500);
    await waitFor(async () => (await health(stack!.decode.ready.address)).streams === 1, 'the stream running');
    await waitFor(async () => {
      const h = (await (await fetch(`${stack!.url}/health`)).json()) as { workers: { role: string; streams: number | null }[] };
      return h.workers.find((w) => w.role === 'decode')?.streams === 1;
    }, '/health reporting the stream');
    const second = await complete(stack, 'the lazy dog', 8);
    assert.equal(second.status, 429);
    assert.equal(second.body.error?.code, 'KVF_ERR_OVERLOADED');
    assert.match(second.body.error!.message, /--max-streams/);
    assert.equal(second.retryAfter, '1');
    const first = await long;
    assert.equal(first.status, 200);
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    assert.match(metrics, /^kvfabric_worker_decode_streams\{worker="decode-tcp",role="decode"\} \d+$/m);
    assert.match(metrics, /^kvfabric_worker_queued_prompt_tokens\{worker="prefill-tcp",role="prefill"\} \d+$/m);
    await poolAtBaseline(stack.decode.ready.address);
    await poolAtBaseline(stack.prefill.ready.address);
  });
});

describe('continuous batching in the workers', { skip: SLOW_MODEL_SKIP }, () => {
  let stack: Stack | undefined;
  afterEach(async () => {
    await stack?.close();
    stack = undefined;
  });

  test('streams up to --max-streams run batched; the next gets 429 with Retry-After; the admitted ones give their output alone', async () => {
    stack = await startStack(model, 'tcp', {}, { extra: ['--blocks', '400', '--max-streams', '4'] });
    const prompts = [0, 1, 2, 3].map((i) => `${i} the quick brown fox`);
    const running = prompts.map((p) => complete(stack!, p, 1000));
    await waitFor(async () => (await health(stack!.decode.ready.address)).streams === 4, 'four streams running');
    const refused = await complete(stack, 'the lazy dog', 8);
    assert.equal(refused.status, 429);
    assert.equal(refused.body.error?.code, 'KVF_ERR_OVERLOADED');
    assert.equal(refused.retryAfter, '1');
    const batched = await Promise.all(running);
    const status = await health(stack.decode.ready.address);
    assert.ok(status.stepSequences > status.engineSteps, `the streams shared steps: ${status.stepSequences} sequences in ${status.engineSteps} steps`);
    for (const [i, r] of batched.entries()) {
      assert.equal(r.status, 200, JSON.stringify(r.body.error));
      const alone = await complete(stack, prompts[i]!, 1000);
      assert.equal(r.body.choices![0]!.text, alone.body.choices![0]!.text, `stream ${i}`);
    }
    await poolAtBaseline(stack.decode.ready.address);
    await poolAtBaseline(stack.prefill.ready.address);
  });

  test('requests that find the pools full wait for blocks instead of failing; all complete as alone', async () => {
    // Two blocks of 16 positions per worker: two sequences at a time; each fits one block (no growth).
    stack = await startStack(tinyModel(), 'tcp', {}, { extra: ['--blocks', '2'] });
    const prompts = [0, 1, 2, 3, 4, 5].map((i) => [3 + i, 7, 11, 13]);
    const alone: Awaited<ReturnType<typeof complete>>[] = [];
    for (const p of prompts) alone.push(await complete(stack, p, 8));
    const together = await Promise.all(prompts.map((p) => complete(stack!, p, 8)));
    together.forEach((r, i) => {
      assert.equal(r.status, 200, JSON.stringify(r.body.error));
      assert.equal(r.body.choices![0]!.text, alone[i]!.body.choices![0]!.text, `request ${i}`);
    });
    await poolAtBaseline(stack.decode.ready.address);
    await poolAtBaseline(stack.prefill.ready.address);
  });
});
