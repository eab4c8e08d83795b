// `kvfabric serve` as the README runs it: three processes, a request through curl, and SIGTERM draining a
// stream in flight before everything exits 0; workers killed under it are routed around and restarted, and
// one that cannot come back stops the stack. Also the standalone process commands' configuration errors.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, test } from 'node:test';

import { frontendConfig } from '../src/serve/config.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLI, CLUSTER, curl, quietLog, startCli, startWorker, stop, tinyModel, toolEnv, waitFor, type Proc } from './helpers/serve.js';

const run = promisify(execFile);
const model = tinyModel();

describe('kvfabric serve', () => {
  test('without --model it fetches the default model first; when that fails it says why in one line, serves the tiny model and says so', async () => {
    // An empty cache and a Python that cannot run pip: the fetch fails at once, without the network.
    const cache = mkdtempSync(join(tmpdir(), 'kvf-model-cache-'));
    const serve = await startCli(['serve', '--provider', 'shm', '--listen', '127.0.0.1:0', '--threads', '1'], {
      KVF_MODEL_CACHE: cache,
      KVF_PYTHON: '/bin/false',
    });
    try {
      assert.ok(
        serve.logs.some((l) => /fetching the default model SmolLM2/.test(l)),
        serve.logs.join('\n'),
      );
      assert.ok(
        serve.logs.some((l) => /^fetch-model: /.test(l)),
        'the reason, in one line',
      );
      assert.ok(
        serve.logs.some((l) => l.includes('tiny deterministic test model')),
        'the warning in the log',
      );
      const models = (await (await fetch(`${serve.ready.address}/v1/models`)).json()) as { data: { id: string; kvfabric_warning?: string }[] };
      assert.equal(models.data[0]!.id, 'tiny-llama');
      assert.match(models.data[0]!.kvfabric_warning ?? '', /not language/);
    } finally {
      await stop(serve);
      rmSync(cache, { recursive: true, force: true });
    }
  });

  test('starts prefill and decode workers and the frontend; SIGTERM drains a stream in flight, then all exit 0', async () => {
    const serve = await startCli(['serve', '--model', model, '--provider', 'shm', '--listen', '127.0.0.1:0', '--threads', '1']);
    const url = serve.ready.address;
    const { stdout } = await curl([
      '-sS',
      `${url}/v1/completions`,
      '-H',
      'content-type: application/json',
      '-d',
      JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 5, temperature: 0 }),
    ]);
    const res = JSON.parse(stdout) as {
      choices: { text: string }[];
      kvfabric: { provider: string; path: string; bytes: number; prefill_worker: string; decode_worker: string };
    };
    assert.equal(res.kvfabric.provider, 'shm');
    assert.equal(res.kvfabric.path, 'fabric'); // the suite runs with KVF_FAST_PATH=0
    assert.ok(res.kvfabric.bytes > 0);
    assert.deepEqual([res.kvfabric.prefill_worker, res.kvfabric.decode_worker], ['prefill-0', 'decode-0']);
    // The seed's proof lines come from each worker, in the seed's order, only after its agent chose LIBFABRIC for
    // the KV path and before it serves: in each worker process, exactly this sequence of those lines.
    const byPid = proofLines(serve.logs);
    assert.equal(byPid.size, 2, 'two worker processes printed proof lines');
    for (const lines of byPid.values()) {
      assert.equal(lines.length, 4, lines.join('\n'));
      assert.match(lines[0]!, /^kvfabric agent ready: backend LIBFABRIC, provider shm,/);
      assert.deepEqual(lines.slice(1), ["NIXL Connect: Using backend(s): ['LIBFABRIC']", 'Backend LIBFABRIC was instantiated', 'worker ready']);
    }

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

/** Per process (pid), the log messages that prove the KV backend, in the order it printed them. */
function proofLines(logs: string[]): Map<number, string[]> {
  const proof = [/^kvfabric agent ready: /, /NIXL/, /^Backend /, /^worker ready$/];
  const byPid = new Map<number, string[]>();
  for (const line of logs) {
    let entry: { pid?: number; msg?: string };
    try {
      entry = JSON.parse(line) as typeof entry;
    } catch {
      continue;
    }
    const { pid, msg } = entry;
    if (pid === undefined || msg === undefined || !proof.some((re) => re.test(msg))) continue;
    byPid.set(pid, [...(byPid.get(pid) ?? []), msg]);
  }
  return byPid;
}

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

describe('kvfabric serve supervises its workers', () => {
  interface Up {
    role: string;
    pid: number;
    address: string;
  }
  /** The stack's log lines with this message. */
  const lines = (serve: Proc, msg: string): Record<string, unknown>[] =>
    serve.logs.flatMap((l) => {
      try {
        const o = JSON.parse(l) as Record<string, unknown>;
        return o.msg === msg ? [o] : [];
      } catch {
        return [];
      }
    });
  const ups = (serve: Proc, role: string): Up[] => lines(serve, 'worker up').filter((l) => l.role === role) as unknown as Up[];
  /** The first prefill and decode workers' log lines (stderr may be read after the ready line on stdout). */
  const firstWorkers = async (serve: Proc): Promise<[Up, Up]> => {
    await waitFor(() => ups(serve, 'prefill').length > 0 && ups(serve, 'decode').length > 0, "the workers' up lines");
    return [ups(serve, 'prefill')[0]!, ups(serve, 'decode')[0]!];
  };
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const complete = async (url: string) => {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 4, temperature: 0 }),
    });
    return {
      status: res.status,
      body: (await res.json()) as {
        kvfabric?: { mode: string; prefill_worker: string | null; decode_worker: string; fallback_reason: string | null };
        error?: { code: string };
      },
    };
  };
  const healthy = async (url: string, role: string): Promise<boolean> => {
    const h = (await (await fetch(`${url}/health`)).json()) as { workers: { role: string; healthy: boolean }[] };
    return h.workers.some((w) => w.role === role && w.healthy);
  };
  /** The stack's exit, or a failure after `ms` (a stack that never stops must not hang the suite). */
  const exitWithin = (serve: Proc, ms = 30_000) =>
    Promise.race([
      serve.exited,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`kvfabric serve still runs after ${ms} ms`)), ms).unref()),
    ]);
  /** No process of this run is left: every worker pid it ever logged, and nothing else running its (unique) model file. */
  const noneLeft = async (serve: Proc, modelPath: string): Promise<void> => {
    for (const up of [...ups(serve, 'prefill'), ...ups(serve, 'decode')]) assert.equal(alive(up.pid), false, `worker ${up.role} pid ${up.pid} still runs`);
    // toolEnv: pgrep hangs with the sanitizer run's LD_PRELOAD of libasan, as curl does.
    const found = await run('pgrep', ['-f', modelPath], { env: toolEnv() }).then(
      (r) => r.stdout.trim(),
      () => '', // pgrep exits 1 when nothing matches
    );
    assert.equal(found, '', `processes of this stack still run: ${found}`);
  };

  test('kill -9 prefill: requests fall back to local prefill, then go to the restarted worker; kill -9 decode: fast 503 until it is back; SIGTERM during a backoff exits 0', async () => {
    const own = tinyModel();
    // A first restart delay long enough that requests reliably land while the worker is down.
    const serve = await startCli(['serve', '--model', own, '--provider', 'tcp', '--listen', '127.0.0.1:0', '--threads', '1'], { KVF_RESTART_DELAY_MS: '3000' });
    const url = serve.ready.address;
    try {
      assert.equal((await complete(url)).body.kvfabric?.mode, 'pull');
      const [prefill, decode] = await firstWorkers(serve);
      assert.ok(alive(prefill.pid) && alive(decode.pid));

      process.kill(prefill.pid, 'SIGKILL');
      await waitFor(() => lines(serve, 'worker exited').some((l) => l.pid === prefill.pid), 'the stack saw the prefill worker die');
      const during = await complete(url);
      assert.equal(during.status, 200, JSON.stringify(during.body));
      assert.equal(during.body.kvfabric?.mode, 'fallback');
      assert.equal(during.body.kvfabric?.prefill_worker, null);
      assert.match(during.body.kvfabric?.fallback_reason ?? '', /no prefill worker/);
      // The response really came while the worker was down, not from a restart racing it.
      assert.equal(ups(serve, 'prefill').length, 1);

      await waitFor(() => ups(serve, 'prefill').length === 2, 'the prefill worker restarted');
      const restarted = ups(serve, 'prefill')[1]!;
      assert.notEqual(restarted.pid, prefill.pid);
      assert.notEqual(restarted.address, prefill.address);
      await waitFor(() => healthy(url, 'prefill'), 'the restarted prefill worker healthy in the router');
      const after = await complete(url);
      assert.deepEqual([after.status, after.body.kvfabric?.mode, after.body.kvfabric?.prefill_worker], [200, 'pull', 'prefill-0']);

      process.kill(decode.pid, 'SIGKILL');
      await waitFor(() => lines(serve, 'worker exited').some((l) => l.pid === decode.pid), 'the stack saw the decode worker die');
      const down = await complete(url);
      assert.deepEqual([down.status, down.body.error?.code], [503, 'KVF_ERR_NO_WORKER']);
      assert.equal(ups(serve, 'decode').length, 1);
      await waitFor(() => ups(serve, 'decode').length === 2, 'the decode worker restarted');
      await waitFor(() => healthy(url, 'decode'), 'the restarted decode worker healthy in the router');
      const back = await complete(url);
      assert.deepEqual([back.status, back.body.kvfabric?.mode, back.body.kvfabric?.decode_worker], [200, 'pull', 'decode-0']);

      // SIGTERM while a restart waits out its backoff: nothing is started any more, everything exits.
      process.kill(restarted.pid, 'SIGKILL');
      await waitFor(() => lines(serve, 'worker exited').some((l) => l.pid === restarted.pid), 'the stack saw the restarted prefill worker die');
      serve.child.kill('SIGTERM');
      assert.deepEqual(await exitWithin(serve), { code: 0, signal: null });
      assert.equal(ups(serve, 'prefill').length, 2, 'no prefill worker was started during the shutdown');
      await noneLeft(serve, own);
    } finally {
      await stop(serve); // a failed test still stops the stack, which stops its workers
    }
  });

  test('a worker that cannot start again stops the stack with exit 1 after 5 failures in a row, leaving no process', async () => {
    const own = tinyModel();
    const serve = await startCli(['serve', '--model', own, '--provider', 'tcp', '--listen', '127.0.0.1:0', '--threads', '1'], { KVF_RESTART_DELAY_MS: '20' });
    try {
      const [prefill] = await firstWorkers(serve);
      unlinkSync(own); // the frontend has read it; a new worker cannot load it
      process.kill(prefill.pid, 'SIGKILL');
      assert.deepEqual(await exitWithin(serve), { code: 1, signal: null });
      assert.equal(lines(serve, 'worker restart failed').length, 4); // the death, then four starts that failed
      assert.equal(lines(serve, 'worker keeps failing; giving up').length, 1);
      await noneLeft(serve, own);
    } finally {
      await stop(serve); // a failed test still stops the stack, which stops its workers
    }
  });
});

describe('worker registry', () => {
  test('workers started with --register join the frontend, serve, and leave it on SIGTERM', async () => {
    const frontend = await Frontend.start(
      frontendConfig({ flags: { ...CLUSTER, model, listen: '127.0.0.1:0', registryListen: '127.0.0.1:0', healthIntervalMs: 200 }, env: {} }),
      quietLog,
    );
    try {
      const extra = ['--register', frontend.registryAddress!];
      const [prefill, decode] = await Promise.all([
        startWorker('prefill', { model, provider: 'tcp', id: 'reg-prefill', extra }),
        startWorker('decode', { model, provider: 'tcp', id: 'reg-decode', extra }),
      ]);
      await frontend.workersReady(['prefill', 'decode']);
      assert.deepEqual(
        frontend.router.workers().map((w) => w.source),
        ['registry', 'registry'],
      );
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
