// scripts/test-inference.sh, the deployment's end-to-end check, against a real local stack (`kvfabric serve`:
// frontend plus prefill and decode processes, KV over tcp) — and against real HTTP servers that answer 2xx
// but without the proof: no `kvfabric` report, empty text, no bytes moved, or not ready. The seed's script
// passed on any 2xx; this one must fail on each of those.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { ROOT, startCli, stop, tinyModel, toolEnv, type Proc } from './helpers/serve.js';

const SCRIPT = join(ROOT, 'scripts', 'test-inference.sh');

interface Outcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the script without a shell in between; never throws (the exit code is the result). */
function runScript(url: string, env: NodeJS.ProcessEnv = {}, args = ['local']): Promise<Outcome> {
  return new Promise((resolve) => {
    execFile('bash', [SCRIPT, ...args], { env: toolEnv({ KVF_URL: url, TIMEOUT: '60', ...env }) }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

describe('test-inference.sh against kvfabric serve', () => {
  let serve: Proc;
  before(async () => {
    serve = await startCli(['serve', '--model', tinyModel(), '--provider', 'tcp', '--listen', '127.0.0.1:0', '--threads', '1']);
  });
  after(async () => {
    if (serve) await stop(serve);
  });

  test('passes: text, backend LIBFABRIC, provider tcp, bytes moved', async () => {
    const r = await runScript(serve.ready.address, { EXPECT_PROVIDER: 'tcp' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /health: ok/);
    assert.match(r.stdout, /PASS: KV over LIBFABRIC\/tcp;ofi_rxm \(path fabric\), rails \[0\], READ [1-9]\d* bytes/);
  });

  test('fails when the KV went over another provider than expected', async () => {
    const r = await runScript(serve.ready.address, { EXPECT_PROVIDER: 'efa' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FAIL: KV provider is tcp;ofi_rxm, expected efa/);
  });
});

describe('test-inference.sh against servers that answer 2xx without the proof', () => {
  const proof = {
    mode: 'pull',
    backend: 'LIBFABRIC',
    provider: 'efa',
    rails: [0],
    op: 'READ',
    path: 'fabric',
    bytes: 737280,
    transfer_ms: 1.5,
    prefill_worker: 'p',
    decode_worker: 'd',
  };
  const completion = (text: string, kvfabric?: object) => ({
    id: 'cmpl-1',
    object: 'text_completion',
    model: 'm',
    choices: [{ index: 0, text, finish_reason: 'length' }],
    ...(kvfabric ? { kvfabric } : {}),
  });
  const servers: Server[] = [];

  /** A real HTTP server: /health with `health`, /v1/models, and `reply` for every completion. */
  async function serveJson(reply: object, health = 200): Promise<string> {
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        const [status, body] =
          req.url === '/health'
            ? [health, { status: health === 200 ? 'ok' : 'not ready' }]
            : req.url === '/v1/models'
              ? [200, { object: 'list', data: [{ id: 'm', object: 'model' }] }]
              : [200, reply];
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
      });
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }
  after(() => {
    for (const s of servers) s.close();
  });

  test('fails when the bytes bypassed the expected provider (same-host fast path)', async () => {
    const r = await runScript(await serveJson(completion(' Paris.', { ...proof, path: 'cma', rails: [] })), { EXPECT_PROVIDER: 'efa' });
    assert.equal(r.code, 1);
    assert.match(r.stderr, /KV went by path "cma", not over the efa provider/);
  });

  test('the control: a complete answer with the proof passes', async () => {
    const r = await runScript(await serveJson(completion(' Paris.', proof)), { EXPECT_PROVIDER: 'efa' });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /PASS: KV over LIBFABRIC\/efa/);
  });

  test('fails when the transport report is missing', async () => {
    const r = await runScript(await serveJson(completion(' Paris.')));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FAIL: no `kvfabric` transport report/);
  });

  test('fails when the text is empty', async () => {
    const r = await runScript(await serveJson(completion('', proof)));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FAIL: empty completion text/);
  });

  test('fails when no KV bytes moved, or another backend carried them', async () => {
    const none = await runScript(await serveJson(completion(' Paris.', { ...proof, mode: 'fallback', bytes: 0, fallback_reason: 'prefill timed out' })));
    assert.equal(none.code, 1);
    assert.match(none.stderr, /FAIL: KV bytes moved: 0 \(mode fallback, fallback: prefill timed out\)/);
    const ucx = await runScript(await serveJson(completion(' Paris.', { ...proof, backend: 'UCX' })));
    assert.equal(ucx.code, 1);
    assert.match(ucx.stderr, /FAIL: KV backend is "UCX", expected LIBFABRIC/);
  });

  test('fails when the frontend is not ready, and without a service name', async () => {
    const r = await runScript(await serveJson(completion(' Paris.', proof), 503));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /FAIL: GET \/health: HTTP 503/);
    const usage = await runScript('http://127.0.0.1:1', {}, []);
    assert.equal(usage.code, 2);
    assert.match(usage.stdout, /Usage: scripts\/test-inference.sh <service-name>/);
  });
});
