// The disaggregated stack end to end: prefill and decode worker processes (real CLI, real libfabric
// providers), the frontend, the official `openai` client and curl. Disaggregated output must equal
// aggregated output (the same engine in one process) token for token, and every response must carry a
// transport proof whose bytes equal the prompt's KV size.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { ReferenceEngine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { Tokenizer } from '../src/engine/tokenizer.js';
import { kvBytesFor } from '../src/kv/plan.js';
import type { KvProof } from '../src/serve/flow.js';
import { frontendConfig } from '../src/serve/config.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLUSTER, SMOLLM2, SMOLLM2_SKIP, curl, poolAtBaseline, quietLog, startStack, tinyModel, waitFor, type Stack } from './helpers/serve.js';

const tiny = tinyModel();
let model = tiny;

// Varied lengths: 1 token, within one 16-token block, exactly on block boundaries, several blocks.
const WORDS = 'the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial kings near old stone bridges'.split(' ');
const PROMPTS = Array.from({ length: 24 }, (_, i) => {
  const n = [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 36, 40][i % 18]!;
  return Array.from({ length: n }, (_, j) => WORDS[(i * 7 + j * 3) % WORDS.length]).join(' ') + (i % 3 === 0 ? '.' : '');
}) as (string | number[])[];
// Token-id prompts that end exactly on block boundaries (16 positions per block).
PROMPTS.push(...[16, 32, 48].map((n) => Array.from({ length: n }, (_, j) => 3 + ((j * 37) % 290))));

/** The reference: the same engine and settings in this process, no fabric, no gRPC. */
async function aggregated(prompt: string | number[], options: { maxTokens: number; temperature?: number; seed?: number }) {
  const tokenizer = await Tokenizer.fromFile(model);
  const engine = new ReferenceEngine({
    modelPath: model,
    pool: new Uint8Array(64 * ReferenceEngine.blockBytes(model, { tokensPerBlock: 16 })),
    tokensPerBlock: 16,
    threads: 1,
  });
  try {
    const tokens = typeof prompt === 'string' ? tokenizer.encode(prompt) : prompt;
    return { ...(await generate(engine, tokenizer, tokens, options)), layout: engine.layout, promptTokens: tokens.length };
  } finally {
    await engine.close();
  }
}

async function streamedText(client: OpenAI, model: string, prompt: string | number[]): Promise<string> {
  const stream = await client.completions.create({ model, prompt, max_tokens: 24, temperature: 0, stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
  return text;
}

function assertProof(proof: KvProof, expected: { op: string; provider: string; bytes: number; stack: Stack }) {
  assert.equal(proof.backend, 'LIBFABRIC');
  assert.equal(proof.op, expected.op);
  assert.equal(proof.provider, expected.provider);
  assert.equal(proof.bytes, expected.bytes);
  assert.ok(proof.rails.length >= 1);
  assert.equal(proof.prefill_worker, expected.stack.prefill.ready.workerId);
  assert.equal(proof.decode_worker, expected.stack.decode.ready.workerId);
  assert.equal(proof.fallback_reason, null);
}

describe('serving over tcp, pull mode', () => {
  let stack: Stack;
  let client: OpenAI;
  before(async () => {
    stack = await startStack(model, 'tcp');
    client = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  });
  after(() => stack.close());

  test('the openai client lists the model and gets completions and chat completions, streaming and not', async () => {
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      [stack.modelName],
    );

    const completion = await client.completions.create({ model: stack.modelName, prompt: 'hello there', max_tokens: 12, temperature: 0 });
    const ref = await aggregated('hello there', { maxTokens: 12 });
    assert.equal(completion.choices[0]!.text, ref.text);
    assert.equal(completion.usage!.prompt_tokens, ref.promptTokens);
    assert.equal(completion.usage!.completion_tokens, ref.tokens.length);
    const proof = (completion as unknown as { kvfabric: KvProof }).kvfabric;
    assertProof(proof, { op: 'READ', provider: 'tcp;ofi_rxm', bytes: kvBytesFor(ref.layout, ref.promptTokens), stack });

    const stream = await client.completions.create({
      model: stack.modelName,
      prompt: 'hello there',
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let last: unknown;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      last = chunk;
    }
    assert.equal(text, ref.text);
    assert.equal((last as { usage: { completion_tokens: number } }).usage.completion_tokens, ref.tokens.length);
    assertProof((last as { kvfabric: KvProof }).kvfabric, { op: 'READ', provider: 'tcp;ofi_rxm', bytes: kvBytesFor(ref.layout, ref.promptTokens), stack });

    const chat = await client.chat.completions.create({
      model: stack.modelName,
      messages: [{ role: 'user', content: 'Say something.' }],
      max_tokens: 10,
      temperature: 0,
    });
    assert.equal(chat.object, 'chat.completion');
    assert.equal(chat.choices[0]!.message.role, 'assistant');
    assert.ok(['stop', 'length'].includes(chat.choices[0]!.finish_reason));
    const chatStream = await client.chat.completions.create({
      model: stack.modelName,
      messages: [{ role: 'user', content: 'Say something.' }],
      max_tokens: 10,
      temperature: 0,
      stream: true,
    });
    let streamed = '';
    let finish: string | null = null;
    for await (const chunk of chatStream) {
      streamed += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(streamed, chat.choices[0]!.message.content);
    assert.equal(finish, chat.choices[0]!.finish_reason);
  });

  test('curl gets a completion and an SSE stream', async () => {
    const body = JSON.stringify({ model: stack.modelName, prompt: 'hello there', max_tokens: 6, temperature: 0 });
    const { stdout } = await curl(['-sS', '-X', 'POST', `${stack.url}/v1/completions`, '-H', 'content-type: application/json', '-d', body]);
    const json = JSON.parse(stdout) as { choices: { text: string }[]; kvfabric: KvProof };
    const ref = await aggregated('hello there', { maxTokens: 6 });
    assert.equal(json.choices[0]!.text, ref.text);
    assert.equal(json.kvfabric.op, 'READ');

    const sse = await curl([
      '-sS',
      '-N',
      '-X',
      'POST',
      `${stack.url}/v1/completions`,
      '-H',
      'content-type: application/json',
      '-d',
      body.replace('}', ',"stream":true}'),
    ]);
    const events = sse.stdout.split('\n\n').filter(Boolean);
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events
      .slice(0, -1)
      .map((e) => JSON.parse(e.replace(/^data: /, '')) as { choices: { text: string; finish_reason: string | null }[]; kvfabric?: KvProof });
    assert.equal(chunks.map((c) => c.choices[0]!.text).join(''), ref.text);
    assert.ok(chunks.at(-1)!.kvfabric!.bytes > 0);
    assert.ok(chunks.at(-1)!.choices[0]!.finish_reason);
  });

  test(`disaggregated greedy output equals aggregated output for ${PROMPTS.length} prompts; proof bytes = prompt KV size`, async () => {
    for (const prompt of PROMPTS) {
      const ref = await aggregated(prompt, { maxTokens: 24 });
      const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 24, temperature: 0 });
      assert.equal(res.choices[0]!.text, ref.text, `prompt of ${ref.promptTokens} tokens`);
      assert.equal(res.usage!.completion_tokens, ref.tokens.length);
      assert.equal(res.choices[0]!.finish_reason, ref.finishReason);
      assertProof((res as unknown as { kvfabric: KvProof }).kvfabric, {
        op: 'READ',
        provider: 'tcp;ofi_rxm',
        bytes: kvBytesFor(ref.layout, ref.promptTokens),
        stack,
      });
    }
  });

  test('16 concurrent requests, batched in both workers, give the aggregated output each gives alone; pools back to baseline', async () => {
    const prompts = PROMPTS.slice(0, 16);
    const refs: Awaited<ReturnType<typeof aggregated>>[] = [];
    for (const prompt of prompts) refs.push(await aggregated(prompt, { maxTokens: 24 }));
    const before = await workerBatch(stack.decode.ready.workerId!);
    const results = await Promise.all(
      prompts.map((prompt, i) =>
        i % 2 === 0
          ? client.completions.create({ model: stack.modelName, prompt, max_tokens: 24, temperature: 0 }).then((r) => r.choices[0]!.text)
          : streamedText(client, stack.modelName, prompt),
      ),
    );
    results.forEach((text, i) => assert.equal(text, refs[i]!.text, `request ${i} (prompt of ${refs[i]!.promptTokens} tokens)`));
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
    // The decode worker's steps show in /health. Whether two streams shared a step depends on timing (the tiny
    // model decodes a stream in a few ms, so prefill decides how much they overlap): test/engine-batch.test.ts
    // covers the batching itself deterministically.
    await waitFor(async () => (await workerBatch(stack.decode.ready.workerId!)).steps > before.steps, '/health catching up');
    const after = await workerBatch(stack.decode.ready.workerId!);
    assert.ok(after.sequences - before.sequences >= after.steps - before.steps, JSON.stringify({ before, after }));
    // The streams decoded (pulled K/V, nothing to prefill here): the engine's clock counted decode steps.
    assert.ok(after.decodeSteps > before.decodeSteps && after.decodeStepSeconds > before.decodeStepSeconds, JSON.stringify({ before, after }));
  });

  test('seeded sampling continues across the two workers exactly as in one process', async () => {
    for (const [i, prompt] of PROMPTS.slice(0, 6).entries()) {
      const ref = await aggregated(prompt, { maxTokens: 20, temperature: 0.9, seed: 11 + i });
      const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 20, temperature: 0.9, seed: 11 + i });
      assert.equal(res.choices[0]!.text, ref.text);
    }
  });

  test('stop sequences end the stream early and free the blocks', async () => {
    const prompt = PROMPTS[5] as string;
    const ref = await aggregated(prompt, { maxTokens: 24 });
    const stop = ref.text.slice(3, 5);
    const cut = await aggregated(prompt, { maxTokens: 24, stop: [stop] } as never);
    const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 24, temperature: 0, stop });
    assert.equal(res.choices[0]!.text, cut.text);
    assert.equal(res.choices[0]!.finish_reason, 'stop');
  });

  test('bad requests get OpenAI error objects with stable codes', async () => {
    const post = async (path: string, body: string) => {
      const r = await fetch(`${stack.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      return { status: r.status, json: (await r.json()) as { error: { code: string; type: string; param: string | null; message: string } } };
    };
    const cases: [string, string, number, string, string | null][] = [
      ['/v1/completions', '{"model": ', 400, 'KVF_ERR_BAD_REQUEST', null],
      ['/v1/completions', JSON.stringify({ model: stack.modelName }), 400, 'KVF_ERR_BAD_REQUEST', 'prompt'],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: 'x', bogus: 1 }), 400, 'KVF_ERR_BAD_REQUEST', 'bogus'],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: 'x', n: 2 }), 400, 'KVF_ERR_BAD_REQUEST', 'n'],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: 'x', max_tokens: '5' }), 400, 'KVF_ERR_BAD_REQUEST', 'max_tokens'],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: 'x', temperature: -1 }), 400, 'KVF_ERR_BAD_REQUEST', 'temperature'],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: [1, 2, 99999] }), 400, 'KVF_ERR_BAD_REQUEST', null],
      ['/v1/completions', JSON.stringify({ model: 'gpt-4', prompt: 'x' }), 404, 'KVF_ERR_UNKNOWN_MODEL', null],
      ['/v1/completions', JSON.stringify({ model: stack.modelName, prompt: 'word '.repeat(400) }), 400, 'KVF_ERR_CONTEXT_OVERFLOW', null],
      ['/v1/chat/completions', JSON.stringify({ model: stack.modelName, messages: [] }), 400, 'KVF_ERR_BAD_REQUEST', 'messages'],
      [
        '/v1/chat/completions',
        JSON.stringify({ model: stack.modelName, messages: [{ role: 'tool', content: 'x' }] }),
        400,
        'KVF_ERR_BAD_REQUEST',
        'messages.0.role',
      ],
      ['/v1/nowhere', '{}', 404, 'KVF_ERR_BAD_REQUEST', null],
    ];
    for (const [path, body, status, code, param] of cases) {
      const r = await post(path, body);
      assert.equal(r.status, status, `${path} ${body.slice(0, 60)}: ${JSON.stringify(r.json)}`);
      assert.equal(r.json.error.code, code, body.slice(0, 60));
      if (param) assert.equal(r.json.error.param, param, body.slice(0, 60));
      assert.ok(r.json.error.message.length > 0);
    }
    await assert.rejects(
      client.completions.create({ model: 'nope', prompt: 'x' }),
      (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404 && e.code === 'KVF_ERR_UNKNOWN_MODEL',
    );
  });

  /** A decode worker's batching as /health shows it, in counts: steps, and the sequences they carried. */
  async function workerBatch(id: string): Promise<{ steps: number; sequences: number; decodeSteps: number; decodeStepSeconds: number }> {
    type Batch = { steps: number; step_sequences: number; decode_steps: number; decode_step_seconds: number };
    const h = (await (await fetch(`${stack.url}/health`)).json()) as { workers: { id: string; batch: Batch | null }[] };
    const b = h.workers.find((w) => w.id === id)!.batch!;
    return { steps: b.steps, sequences: b.step_sequences, decodeSteps: b.decode_steps, decodeStepSeconds: b.decode_step_seconds };
  }

  test('/health lists the workers, /live answers, /metrics counts tokens and KV bytes', async () => {
    const healthRes = await fetch(`${stack.url}/health`);
    assert.equal(healthRes.status, 200);
    const h = (await healthRes.json()) as { workers: { id: string; role: string; healthy: boolean; provider: string; total_blocks: number }[] };
    assert.deepEqual(h.workers.map((w) => [w.id, w.role, w.healthy, w.provider]).sort(), [
      [stack.decode.ready.workerId, 'decode', true, 'tcp;ofi_rxm'],
      [stack.prefill.ready.workerId, 'prefill', true, 'tcp;ofi_rxm'],
    ]);
    assert.equal((await fetch(`${stack.url}/live`)).status, 200);
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    for (const name of [
      'kvfabric_requests_total',
      'kvfabric_requests_inflight',
      'kvfabric_time_to_first_token_seconds_count',
      'kvfabric_inter_token_latency_seconds_count',
      'kvfabric_input_tokens_total',
      'kvfabric_output_tokens_total',
      'kvfabric_kv_bytes_moved_total{backend="LIBFABRIC",provider="tcp;ofi_rxm",op="READ"}',
      'kvfabric_kv_transfer_seconds_count',
      'kvfabric_kv_blocks_used',
      'kvfabric_worker_engine_steps{worker=',
      'kvfabric_worker_batch_sequences{worker=',
      'kvfabric_worker_batch_occupancy{worker=',
      'kvfabric_worker_step_tokens{worker=',
      'kvfabric_worker_decode_step_seconds{worker=',
    ]) {
      assert.ok(metrics.includes(name), name);
    }
    const moved = Number(/kvfabric_kv_bytes_moved_total\{[^}]*\} (\d+)/.exec(metrics)![1]);
    assert.ok(moved > 0);
  });

  test('aggregated mode (decode prefills locally) gives the same output and says no KV moved', async () => {
    const aggregatedFrontend = await Frontend.start(
      frontendConfig({
        flags: { ...CLUSTER, model, listen: '127.0.0.1:0', decode: [stack.decode.ready.address], mode: 'aggregated', healthIntervalMs: 200 },
        env: {},
      }),
      quietLog,
    );
    try {
      const c = new OpenAI({ baseURL: `${aggregatedFrontend.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      for (const prompt of PROMPTS.slice(0, 4)) {
        const ref = await aggregated(prompt, { maxTokens: 16 });
        const res = await c.completions.create({ model: stack.modelName, prompt, max_tokens: 16, temperature: 0 });
        assert.equal(res.choices[0]!.text, ref.text);
        const proof = (res as unknown as { kvfabric: KvProof }).kvfabric;
        assert.equal(proof.mode, 'aggregated');
        assert.equal(proof.bytes, 0);
        assert.equal(proof.prefill_worker, null);
      }
    } finally {
      await aggregatedFrontend.close();
    }
  });

  test('every block is back in both pools', async () => {
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });
});

describe('serving over shm, push mode', () => {
  let stack: Stack;
  before(async () => {
    stack = await startStack(model, 'shm', { mode: 'push' });
  });
  after(() => stack.close());

  test('prefill WRITEs the prompt KV into blocks the decode worker reserved; output equals aggregated', async () => {
    const client = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    for (const prompt of PROMPTS.slice(0, 10)) {
      const ref = await aggregated(prompt, { maxTokens: 20 });
      const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 20, temperature: 0 });
      assert.equal(res.choices[0]!.text, ref.text);
      const proof = (res as unknown as { kvfabric: KvProof }).kvfabric;
      assert.equal(proof.mode, 'push');
      assertProof(proof, { op: 'WRITE', provider: 'shm', bytes: kvBytesFor(ref.layout, ref.promptTokens), stack });
    }
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('pull mode over shm too', async () => {
    const pull = await Frontend.start(
      frontendConfig({
        flags: {
          ...CLUSTER,
          model,
          listen: '127.0.0.1:0',
          prefill: [stack.prefill.ready.address],
          decode: [stack.decode.ready.address],
          healthIntervalMs: 200,
        },
        env: {},
      }),
      quietLog,
    );
    try {
      const client = new OpenAI({ baseURL: `${pull.url}/v1`, apiKey: 'unused', maxRetries: 0 });
      for (const prompt of PROMPTS.slice(10, 16)) {
        const ref = await aggregated(prompt, { maxTokens: 20 });
        const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 20, temperature: 0 });
        assert.equal(res.choices[0]!.text, ref.text);
        assertProof((res as unknown as { kvfabric: KvProof }).kvfabric, {
          op: 'READ',
          provider: 'shm',
          bytes: kvBytesFor(ref.layout, ref.promptTokens),
          stack,
        });
      }
    } finally {
      await pull.close();
    }
  });
});

describe('SmolLM2-135M-Instruct, disaggregated over shm', { skip: SMOLLM2_SKIP }, () => {
  let stack: Stack;
  before(async () => {
    model = SMOLLM2;
    stack = await startStack(SMOLLM2, 'shm');
  });
  after(async () => {
    model = tiny;
    await stack.close();
  });

  test('greedy output equals aggregated output for 20 prompts', async () => {
    const client = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    const subjects = ['France', 'the sky', 'the ocean', 'a cat', 'music', 'winter', 'the moon', 'bread', 'a river', 'mountains'];
    const prompts = subjects.flatMap((s) => [`The most interesting thing about ${s} is`, `Question: what do you know about ${s}?\nAnswer:`]);
    for (const prompt of prompts) {
      const ref = await aggregated(prompt, { maxTokens: 8 });
      const res = await client.completions.create({ model: stack.modelName, prompt, max_tokens: 8, temperature: 0 });
      assert.equal(res.choices[0]!.text, ref.text, prompt);
      const proof = (res as unknown as { kvfabric: KvProof }).kvfabric;
      // A prompt answered by an end token at once needs no decode worker, so no KV moves (and none is claimed).
      if (ref.tokens.length === 0) assert.deepEqual([proof.op, proof.bytes], [null, 0]);
      else assertProof(proof, { op: 'READ', provider: 'shm', bytes: kvBytesFor(ref.layout, ref.promptTokens), stack });
    }
  });
});
