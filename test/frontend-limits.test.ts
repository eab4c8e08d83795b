// The frontend's own limits against clients that would hold it: prompts too long for the context refused before
// they are tokenized, slow bodies cut off, and a cap on open connections; and a /metrics page scrapers accept. A frontend with no workers is enough:
// all of this happens before a request reaches the router.
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';

import { frontendConfig } from '../src/serve/config.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { CLUSTER, quietLog, tinyModel, waitFor } from './helpers/serve.js';

// Long enough for a 4 MB body on a loaded 2-core machine; the slow-body test waits it out.
const BODY_TIMEOUT_MS = 2000;
const MAX_CONNECTIONS = 8;

/** A raw connection to the frontend, resolved once connected; `closed` resolves when the server drops it. */
function open(url: string): Promise<{ socket: Socket; closed: Promise<string> }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname);
    let received = '';
    socket.on('data', (d) => (received += d.toString()));
    const closed = new Promise<string>((r) => socket.on('close', () => r(received)));
    socket.once('connect', () => resolve({ socket, closed }));
    socket.once('error', reject);
  });
}

/** `p`, or a failure after `ms`: every wait here has a deadline. */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

describe('frontend limits', () => {
  let frontend: Frontend;
  before(async () => {
    const flags = { ...CLUSTER, model: tinyModel(), listen: '127.0.0.1:0', bodyTimeoutMs: BODY_TIMEOUT_MS, maxConnections: MAX_CONNECTIONS };
    frontend = await Frontend.start(frontendConfig({ flags, env: {} }), quietLog);
  });
  after(() => frontend?.close());

  const complete = (body: object) =>
    fetch(`${frontend.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', ...body }),
    });

  test('a prompt too long for the context is refused by its length, before tokenizing; chat too', async () => {
    const huge = 'a'.repeat(4_000_000);
    const pending = complete({ prompt: huge, max_tokens: 1 });
    // Meanwhile the liveness probe answers within its deadline (the manifests' is 1 s; tokenizing this took 3 s).
    for (let i = 0; i < 10; i++) assert.equal((await fetch(`${frontend.url}/live`, { signal: AbortSignal.timeout(1000) })).status, 200);
    const res = await pending;
    assert.equal(res.status, 400);
    const { error } = (await res.json()) as { error: { code: string; message: string } };
    assert.equal(error.code, 'KVF_ERR_CONTEXT_OVERFLOW');
    assert.match(error.message, /4000000 characters/);
    const chat = await fetch(`${frontend.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'tiny-llama', messages: [{ role: 'user', content: huge }] }),
    });
    assert.equal(((await chat.json()) as { error: { code: string } }).error.code, 'KVF_ERR_CONTEXT_OVERFLOW');
    // A prompt that may fit is tokenized and judged by its tokens (no worker here, so it gets no further).
    const short = await complete({ prompt: 'hello', max_tokens: 1 });
    assert.equal(((await short.json()) as { error: { code: string } }).error.code, 'KVF_ERR_NO_WORKER');
  });

  test('a body that does not arrive within bodyTimeoutMs gets 408 and loses its connection', async () => {
    const { socket, closed } = await open(frontend.url);
    socket.write('POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"mod');
    assert.match(await within(closed, 10_000, 'the slow body cut off'), /^HTTP\/1\.1 408/);
  });

  test('/metrics never exports NaN, even for scrapes that come together', async () => {
    for (let i = 0; i < 3; i++) {
      const pages = await Promise.all([0, 1].map(async () => (await fetch(`${frontend.url}/metrics`)).text()));
      for (const page of pages) {
        const samples = page.split('\n').filter((l) => l && !l.startsWith('#'));
        assert.ok(samples.length > 10);
        for (const line of samples) assert.ok(Number.isFinite(Number(line.split(' ').pop())) || /\s[+-]Inf$/.test(line), line);
      }
    }
  });

  test('connections beyond maxConnections are closed on arrival; the frontend serves again once they go', async () => {
    const held = await Promise.all(Array.from({ length: MAX_CONNECTIONS }, () => open(frontend.url)));
    const extra = await open(frontend.url);
    extra.socket.write('GET /live HTTP/1.1\r\nhost: x\r\n\r\n');
    assert.equal(await within(extra.closed, 10_000, 'the connection over the cap closed'), '', 'the connection over the cap was served');
    for (const h of held) h.socket.destroy();
    await waitFor(async () => (await fetch(`${frontend.url}/live`).catch(() => undefined))?.status === 200, '/live after the connections closed');
  });
});
