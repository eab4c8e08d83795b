// Faults in the disaggregated stack, with real processes: a prefill worker killed mid-request (the decode
// worker prefills locally and the response says so), a decode worker killed mid-stream (the client gets an
// error event, the prefill pool returns to its baseline), clients that disconnect (blocks freed on both
// sides), workers that stop answering (no request outlives its timeout), a decode worker's own error (it
// reaches the client as its status at once). SIGSTOP holds a worker inside a
// request deterministically; SIGKILL then kills it there.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { afterEach, describe, test } from 'node:test';

import OpenAI from 'openai';

import type { KvProof } from '../src/serve/flow.js';
import {
  AUTH,
  SLOW_MODEL_SHAPE,
  SLOW_MODEL_SKIP,
  SMOLLM2,
  SMOLLM2_SKIP,
  health,
  poolAtBaseline,
  startStack,
  tinyModel,
  waitFor,
  type Stack,
} from './helpers/serve.js';

const model = tinyModel();
const PROMPT = 'the quick brown fox jumps over the lazy dog near the old stone bridge';

interface Completion {
  choices: { text: string; finish_reason: string }[];
  kvfabric: KvProof;
  error?: { code: string; message: string };
}

function post(stack: Stack, body: object, signal?: AbortSignal): Promise<Response> {
  return fetch(`${stack.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: stack.modelName, prompt: PROMPT, temperature: 0, ...body }),
    ...(signal ? { signal } : {}),
  });
}

/** CPU time a process has used (user + system), from /proc. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command; clock ticks are 100 per second on Linux.
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resolves once `n` requests are in flight at the frontend (so a frozen worker is holding them). */
async function inflight(stack: Stack, n = 1): Promise<void> {
  await waitFor(async () => {
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    return Number(/^kvfabric_requests_inflight (\d+)/m.exec(metrics)?.[1]) >= n;
  }, 'request in flight');
  await new Promise((r) => setTimeout(r, 200)); // let the frontend's RPC reach the frozen worker's socket
}

describe('faults', () => {
  let stack: Stack | undefined;
  afterEach(async () => {
    for (const p of [stack?.prefill, stack?.decode]) if (p && p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGCONT');
    await stack?.close();
    stack = undefined;
  });

  test('kill -9 of the prefill worker mid-request: decode prefills locally, same text, the response says so', async () => {
    stack = await startStack(model, 'tcp');
    const expected = (await (await post(stack, { max_tokens: 12 })).json()) as Completion;
    assert.equal(expected.kvfabric.mode, 'pull');
    stack.prefill.child.kill('SIGSTOP');
    const pending = post(stack, { max_tokens: 12 });
    await inflight(stack);
    stack.prefill.child.kill('SIGKILL');
    const res = await pending;
    assert.equal(res.status, 200);
    const body = (await res.json()) as Completion;
    assert.equal(body.choices[0]!.text, expected.choices[0]!.text);
    assert.equal(body.kvfabric.mode, 'fallback');
    assert.equal(body.kvfabric.bytes, 0);
    assert.match(body.kvfabric.fallback_reason!, /prefill worker prefill-tcp/);
    await poolAtBaseline(stack.decode.ready.address);
    // With the prefill worker gone for good, requests keep working through local prefill.
    const next = (await (await post(stack, { max_tokens: 12 })).json()) as Completion;
    assert.equal(next.choices[0]!.text, expected.choices[0]!.text);
    assert.equal(next.kvfabric.mode, 'fallback');
  });

  test('a prefill worker that does not answer in time is bypassed; its blocks are freed when it wakes', async () => {
    stack = await startStack(model, 'shm', { prefillTimeoutMs: 800 });
    stack.prefill.child.kill('SIGSTOP');
    const body = (await (await post(stack, { max_tokens: 8 })).json()) as Completion;
    assert.equal(body.kvfabric.mode, 'fallback');
    assert.match(body.kvfabric.fallback_reason!, /timed out/);
    stack.prefill.child.kill('SIGCONT');
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('kill -9 of the decode worker mid-stream: the client gets an error event; the prefill pool returns to baseline', async () => {
    stack = await startStack(model, 'tcp');
    const client = new OpenAI({ baseURL: `${stack.url}/v1`, apiKey: 'unused', maxRetries: 0 });
    stack.decode.child.kill('SIGSTOP');
    const stream = await client.completions.create({ model: stack.modelName, prompt: PROMPT, max_tokens: 100, temperature: 0, stream: true });
    const chunks: string[] = [];
    await assert.rejects(
      (async () => {
        for await (const chunk of stream) {
          chunks.push(chunk.choices[0]?.text ?? '');
          // The first token came from the prefill worker; the decode worker now dies holding the stream.
          if (chunks.length === 1) stack!.decode.child.kill('SIGKILL');
        }
      })(),
      (err: InstanceType<typeof OpenAI.APIError>) => {
        assert.equal(err.code, 'KVF_ERR_WORKER_FAILED');
        assert.match(err.message, /decode worker/);
        return true;
      },
    );
    assert.equal(chunks.length, 1);
    await poolAtBaseline(stack.prefill.ready.address);
    // Without a decode worker the frontend says so at once instead of hanging.
    await waitFor(() => !stack!.frontend.router.workers().find((w) => w.role === 'decode')!.healthy, 'decode marked unhealthy');
    const res = await post(stack, { max_tokens: 4 });
    assert.equal(res.status, 503);
    assert.equal(((await res.json()) as Completion).error!.code, 'KVF_ERR_NO_WORKER');
  });

  test('kill -9 of the decode worker during a non-streaming request: 502 with a clear error', async () => {
    stack = await startStack(model, 'shm');
    stack.decode.child.kill('SIGSTOP');
    const pending = post(stack, { max_tokens: 50 });
    await inflight(stack);
    stack.decode.child.kill('SIGKILL');
    const res = await pending;
    assert.equal(res.status, 502);
    const body = (await res.json()) as Completion;
    assert.equal(body.error!.code, 'KVF_ERR_WORKER_FAILED');
    await poolAtBaseline(stack.prefill.ready.address);
  });

  test('client disconnect mid-stream frees the blocks on both sides', async () => {
    stack = await startStack(model, 'tcp');
    for (const freeze of [true, false]) {
      if (freeze) stack.decode.child.kill('SIGSTOP');
      const abort = new AbortController();
      const res = await post(stack, { max_tokens: 200, stream: true }, abort.signal);
      const reader = res.body!.getReader();
      await reader.read(); // the first chunk is on its way: the request is mid-stream
      abort.abort();
      if (freeze) stack.decode.child.kill('SIGCONT');
      await poolAtBaseline(stack.prefill.ready.address);
      await poolAtBaseline(stack.decode.ready.address);
    }
  });

  test("an error on the decode worker reaches the client as that error's HTTP status, not as the request timeout", async () => {
    // Two blocks of 16 positions per pool: the decode worker cannot hold prompt + 40 tokens. Before, its error
    // never left the gRPC stream and the client waited for the request timeout (here a minute), then got 504.
    stack = await startStack(model, 'tcp', { requestTimeoutMs: 60_000 }, { extra: ['--blocks', '2'] });
    const res = await post(stack, { max_tokens: 40 });
    assert.equal(res.status, 503);
    assert.equal(((await res.json()) as Completion).error!.code, 'KVF_ERR_POOL_EXHAUSTED');
    // A chat stream has sent its first chunk already: the error arrives as an SSE error event.
    const chat = await fetch(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: stack.modelName, messages: [{ role: 'user', content: PROMPT }], max_tokens: 40, stream: true }),
    });
    const events = (await chat.text())
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)) as Completion);
    assert.equal(events.at(-1)?.error?.code, 'KVF_ERR_POOL_EXHAUSTED');
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('a request without max_tokens holds blocks as it generates, not the whole context: a concurrent one is served', async () => {
    // 16 blocks of 16 positions: exactly the tiny model's context. Reserving prompt + max_tokens up front, a chat
    // request without max_tokens took the whole pool, and every concurrent request failed for want of a block.
    stack = await startStack(model, 'tcp', {}, { extra: ['--blocks', '16'] });
    const abort = new AbortController();
    const long = await fetch(`${stack.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: stack.modelName, messages: [{ role: 'user', content: PROMPT }], temperature: 0, stream: true }),
      signal: abort.signal,
    });
    const reader = long.body!.getReader();
    await reader.read(); // the stream has started: its blocks are taken
    const res = await post(stack, { max_tokens: 4 });
    const body = (await res.json()) as Completion;
    assert.equal(res.status, 200, JSON.stringify(body.error));
    assert.ok(body.choices[0]!.text.length > 0);
    abort.abort();
    await reader.cancel().catch(() => undefined);
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('beyond --max-inflight a request is refused at once with 429 and Retry-After; admitted ones complete', async () => {
    stack = await startStack(model, 'tcp', { maxInflight: 1 });
    stack.decode.child.kill('SIGSTOP'); // holds the admitted request in flight
    const admitted = post(stack, { max_tokens: 8 });
    await inflight(stack);
    const refused = await post(stack, { max_tokens: 8 });
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get('retry-after'), '1');
    assert.equal(((await refused.json()) as Completion).error!.code, 'KVF_ERR_OVERLOADED');
    const health = (await (await fetch(`${stack.url}/health`)).json()) as { inflight: number; max_inflight: number };
    assert.deepEqual([health.inflight, health.max_inflight], [1, 1]);
    stack.decode.child.kill('SIGCONT');
    assert.equal((await admitted).status, 200);
    assert.equal((await post(stack, { max_tokens: 8 })).status, 200);
    assert.match(await (await fetch(`${stack.url}/metrics`)).text(), /^kvfabric_requests_refused_total 1$/m);
  });

  test('SmolLM2: a prefill past its deadline stops at the next layer on the prefill worker while decode prefills locally', { skip: SMOLLM2_SKIP }, async () => {
    const s = (stack = await startStack(
      SMOLLM2,
      'tcp',
      { prefillTimeoutMs: 300 },
      { extra: ['--blocks', '128', '--threads', '1'], env: { KVF_LOG_LEVEL: 'debug' } },
    ));
    const res = await fetch(`${s.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: s.modelName, prompt: 'word '.repeat(1500), max_tokens: 1, temperature: 0 }),
    });
    assert.equal(((await res.json()) as Completion).kvfabric.mode, 'fallback');
    // Before, the prefill worker ran the whole prompt to the end, for nobody, beside the decode worker's copy.
    await waitFor(() => s.prefill.logs.some((l) => /forward pass cancelled at layer/.test(l)), 'the prefill pass cancelled');
    await poolAtBaseline(s.prefill.ready.address);
  });

  test("a request whose client goes away stops its forward passes: the workers' CPU is idle within a second", { skip: SLOW_MODEL_SKIP }, async () => {
    stack = await startStack(tinyModel(SLOW_MODEL_SHAPE), 'tcp', {}, { extra: ['--blocks', '160'] });
    const s = stack;
    // A prompt of about 1,800 tokens (seconds of prefill), then a long generation.
    for (const [worker, body] of [
      [s.prefill, { prompt: 'the quick brown fox jumps over the lazy dog; '.repeat(60), max_tokens: 1 }],
      [s.decode, { max_tokens: 1500, stream: true }],
    ] as const) {
      const abort = new AbortController();
      const idle = cpuSeconds(worker.ready.pid);
      const pending = post(s, body, abort.signal).then((r) => r.body?.getReader().read());
      await waitFor(() => cpuSeconds(worker.ready.pid) > idle + 0.3, `the ${worker.ready.role} worker computing`);
      abort.abort();
      await pending.catch(() => undefined);
      await new Promise((r) => setTimeout(r, 1000));
      const from = cpuSeconds(worker.ready.pid);
      await new Promise((r) => setTimeout(r, 1000));
      assert.ok(cpuSeconds(worker.ready.pid) - from < 0.25, `${worker.ready.role} worker still computing a second after its request went away`);
    }
    await poolAtBaseline(s.prefill.ready.address);
    await poolAtBaseline(s.decode.ready.address);
  });

  test('fabric peers unused for --peer-idle-ms are dropped from the agent; the next request loads its peer again', async () => {
    const s = (stack = await startStack(model, 'tcp', {}, { extra: ['--peer-idle-ms', '1000'] }));
    const pulled = async () => {
      const res = await post(s, { max_tokens: 2 });
      assert.equal(((await res.json()) as Completion).kvfabric.op, 'READ');
    };
    await pulled();
    assert.equal((await health(s.decode.ready.address)).peers, 1);
    await waitFor(async () => (await health(s.decode.ready.address)).peers === 0, 'the idle peer dropped');
    await pulled();
    assert.equal((await health(s.decode.ready.address)).peers, 1);
  });

  test('a decode worker that stops answering: the request fails at its timeout, nothing leaks after', async () => {
    stack = await startStack(model, 'tcp', { requestTimeoutMs: 1500 });
    stack.decode.child.kill('SIGSTOP');
    const res = await post(stack, { max_tokens: 20 });
    assert.equal(res.status, 504);
    assert.equal(((await res.json()) as Completion).error!.code, 'KVF_ERR_TIMEOUT');
    stack.decode.child.kill('SIGCONT');
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('blocks that no decode worker ever pulls are freed when their lease expires', async () => {
    stack = await startStack(model, 'tcp');
    const { workerClient, unary } = await import('../src/serve/rpc.js');
    const client = workerClient(stack.prefill.ready.address, AUTH);
    const res = await unary(client, client.prefill, { requestId: 'orphan', tokens: [5, 6, 7, 8, 9], leaseMs: 300 }, 5000);
    assert.equal(res.kv!.blocks.length, 1);
    await poolAtBaseline(stack.prefill.ready.address);
    client.close();
  });
});
