// `kvfabric serve` as the README runs it: three processes, a request through curl, and SIGTERM draining a
// stream in flight before everything exits 0. Also the standalone process commands' configuration errors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, test } from 'node:test';

import { frontendConfig } from '../src/serve/config.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLI, CLUSTER, curl, quietLog, startCli, startWorker, stop, tinyModel, waitFor } from './helpers/serve.js';

const run = promisify(execFile);
const model = tinyModel();

describe('kvfabric serve', () => {
  test('starts prefill and decode workers and the frontend; SIGTERM drains a stream in flight, then all exit 0', async () => {
    const serve = await startCli(['serve', '--model', model, '--provider', 'shm', '--listen', '127.0.0.1:0', '--threads', '1']);
    const url = serve.ready.address;
    const { stdout } = await curl(['-sS', `${url}/v1/completions`, '-H', 'content-type: application/json', '-d', JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 5, temperature: 0 })]);
    const res = JSON.parse(stdout) as { choices: { text: string }[]; kvfabric: { provider: string; path: string; bytes: number; prefill_worker: string; decode_worker: string } };
    assert.equal(res.kvfabric.provider, 'shm');
    assert.equal(res.kvfabric.path, 'fabric'); // the suite runs with KVF_FAST_PATH=0
    assert.ok(res.kvfabric.bytes > 0);
    assert.deepEqual([res.kvfabric.prefill_worker, res.kvfabric.decode_worker], ['prefill-0', 'decode-0']);
    // The seed's proof lines come from the workers, whose KV path is LIBFABRIC.
    assert.equal(serve.logs.filter((l) => l.includes("NIXL Connect: Using backend(s): ['LIBFABRIC']")).length, 2);
    assert.equal(serve.logs.filter((l) => l.includes('Backend LIBFABRIC was instantiated')).length, 2);

    const streaming = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 200, temperature: 0, stream: true }),
    });
    const reader = streaming.body!.getReader();
    await reader.read();
    serve.child.kill('SIGTERM');
    let text = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) text += Buffer.from(r.value).toString();
    assert.ok(text.trimEnd().endsWith('data: [DONE]'), 'the stream in flight finished');
    assert.deepEqual(await serve.exited, { code: 0, signal: null });
    assert.ok(serve.logs.some((l) => l.includes('worker closed')));
  });
});

describe('kvfabric serve with the same-host fast path (its default)', () => {
  test('KV between the two local workers goes by cross-memory attach, and the proof says so', async () => {
    const serve = await startCli(['serve', '--model', model, '--provider', 'tcp', '--listen', '127.0.0.1:0', '--threads', '1'], { KVF_FAST_PATH: '1' });
    try {
      const res = await fetch(`${serve.ready.address}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello there', max_tokens: 5, temperature: 0 }),
      });
      const body = (await res.json()) as { kvfabric: { path: string; op: string; bytes: number; rails: number[] } };
      // 'mapped' where the pool is shared: allocate's 'auto' shares hugepage memory (reserved or transparent).
      assert.ok(['cma', 'mapped'].includes(body.kvfabric.path), body.kvfabric.path);
      assert.deepEqual([body.kvfabric.op, body.kvfabric.rails], ['READ', []]);
      assert.ok(body.kvfabric.bytes > 0);
    } finally {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
  });
});

describe('worker registry', () => {
  test('workers started with --register join the frontend, serve, and leave it on SIGTERM', async () => {
    const frontend = await Frontend.start(frontendConfig({ flags: { ...CLUSTER, model, listen: '127.0.0.1:0', registryListen: '127.0.0.1:0', healthIntervalMs: 200 }, env: {} }), quietLog);
    try {
      const extra = ['--register', frontend.registryAddress!];
      const [prefill, decode] = await Promise.all([
        startWorker('prefill', { model, provider: 'tcp', id: 'reg-prefill', extra }),
        startWorker('decode', { model, provider: 'tcp', id: 'reg-decode', extra }),
      ]);
      await frontend.workersReady(['prefill', 'decode']);
      assert.deepEqual(frontend.router.workers().map((w) => w.source), ['registry', 'registry']);
      const res = await fetch(`${frontend.url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 4, temperature: 0 }),
      });
      const body = (await res.json()) as { kvfabric: { prefill_worker: string; decode_worker: string; op: string } };
      assert.deepEqual([body.kvfabric.prefill_worker, body.kvfabric.decode_worker, body.kvfabric.op], ['reg-prefill', 'reg-decode', 'READ']);
      assert.deepEqual(await stop(decode), { code: 0, signal: null });
      await waitFor(() => frontend.router.workers().every((w) => w.role !== 'decode'), 'decode deregistered');
      await stop(prefill);
    } finally {
      await frontend.close();
    }
  });
});

describe('process configuration', () => {
  const fails = async (args: string[], env: NodeJS.ProcessEnv, code: string, pattern: RegExp) => {
    const err = await run(process.execPath, [CLI, ...args], { env: { ...process.env, ...env } }).then(
      () => assert.fail('expected a failure'),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(err.code, 1);
    assert.match(err.stderr, new RegExp(code));
    assert.match(err.stderr, pattern);
  };

  test('bad flags, env and config files are refused with coded errors before anything starts', async () => {
    await fails(['decode', '--model', model, '--blocks', 'many'], {}, 'KVF_ERR_BAD_CONFIG', /blocks must be integer/);
    await fails(['prefill', '--model', model], { KVF_TOKENS_PER_BLOCK: '0' }, 'KVF_ERR_BAD_CONFIG', /tokensPerBlock must be >= 1/);
    await fails(['prefill', '--model', model], { NIXL_BACKEND: 'UCX' }, 'KVF_ERR_BACKEND_UNSUPPORTED', /LIBFABRIC/);
    await fails(['frontend', '--model', model, '--listen', 'nowhere'], {}, 'KVF_ERR_BAD_CONFIG', /listen must match pattern/);
    const { writeFileSync, mkdtempSync } = await import('node:fs');
    const { join } = await import('node:path');
    const { tmpdir } = await import('node:os');
    const file = join(mkdtempSync(join(tmpdir(), 'kvf-cfg-')), 'frontend.json');
    writeFileSync(file, JSON.stringify({ model, decode: ['127.0.0.1:1'], requestTimeotMs: 5 }));
    await fails(['frontend', '--config', file], {}, 'KVF_ERR_BAD_CONFIG', /unknown key 'requestTimeotMs'/);
    await fails(['frontend', '--no-such-flag'], {}, 'error', /unknown option/);
  });
});
