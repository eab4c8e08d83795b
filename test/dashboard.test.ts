// The dashboard (GET /, web/dashboard/) in a real headless Chromium over a real local stack: 1 prefill and 1 decode
// worker on the tiny model, KV over tcp. The page must list both workers from its feed, stream a chat answer
// through the OpenAI endpoint, and show that answer's KV transfer (path and bytes) in the chat, the totals and the
// last requests. Closing the frontend with the page's feed open must end the feed, not wait for it.
// Needs Chromium (Debian's `chromium`, or KVF_CHROMIUM); without it the suite skips, except in CI, where it fails.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { get as httpGet, type ClientRequest } from 'node:http';
import { after, before, describe, test } from 'node:test';

import puppeteer, { type Browser, type Page } from 'puppeteer-core';

import type { FinishedRequest, RecentStats } from '../src/serve/frontend/recent.js';
import { startStack, tinyModel, waitFor, type Stack } from './helpers/serve.js';

const CHROMIUM = process.env.KVF_CHROMIUM ?? '/usr/bin/chromium';
const SKIP = !existsSync(CHROMIUM) && !process.env.CI ? `no Chromium at ${CHROMIUM} (apt-get install chromium, or set KVF_CHROMIUM)` : false;
/** The longest any one step may wait: the page, the feed, a chat answer. */
const STEP_MS = 30_000;
const PATHS = ['fabric', 'cma', 'mapped'];

/** `promise`, or a rejection naming `what` after `ms`. */
async function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, late]);
  } finally {
    clearTimeout(timer);
  }
}

interface State {
  model: string;
  feeds: number;
  workers: { id: string; role: string; healthy: boolean; address?: string }[];
  stats: RecentStats;
  recent: FinishedRequest[];
}

describe('the dashboard in a browser', { skip: SKIP, timeout: 180_000 }, () => {
  let stack: Stack | undefined;
  let browser: Browser | undefined;
  let page: Page;
  // What went wrong inside the page: script errors, console errors (a CSP refusal is one).
  const pageErrors: string[] = [];

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `CI needs Chromium at ${CHROMIUM} (.ci/run and scripts/setup.sh install Debian's chromium)`);
    stack = await startStack(tinyModel(), 'tcp');
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // --no-sandbox: CI and containers run as root, where Chromium's sandbox will not start.
      args: ['--no-sandbox', '--headless=new', '--disable-gpu', '--disable-dev-shm-usage'],
      // The browser is not under test: under `npm run test:asan` the sanitizer runtime preloaded into every child
      // would hang Chromium's start.
      env: withoutSanitizers(process.env),
      timeout: STEP_MS,
      protocolTimeout: STEP_MS,
    });
    page = await browser.newPage();
    page.setDefaultTimeout(STEP_MS);
    page.on('pageerror', (err) => pageErrors.push(`pageerror: ${(err as Error).message}`));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()} (${m.location().url ?? 'no url'})`);
    });
  });

  after(async () => {
    try {
      await browser?.close();
    } finally {
      await stack?.close();
    }
  });

  const state = async (): Promise<State> => (await (await fetch(`${stack!.url}/dashboard/state`, { signal: AbortSignal.timeout(STEP_MS) })).json()) as State;

  test('GET / is the page, with its script, and it lists both workers from the feed', async () => {
    const res = await page.goto(`${stack!.url}/`, { waitUntil: 'load' });
    assert.equal(res?.status(), 200);
    assert.match(res!.headers()['content-type']!, /^text\/html/);
    assert.match(res!.headers()['content-security-policy']!, /script-src 'self'/);
    assert.equal(await page.title(), 'kvfabric');

    await page.waitForFunction(() => document.querySelectorAll('#workers tbody tr[data-healthy="true"]').length === 2);
    const rows = await page.$$eval('#workers tbody tr', (trs) => trs.map((tr) => [tr.getAttribute('data-role'), tr.getAttribute('data-id')]));
    assert.deepEqual(rows, [
      ['prefill', stack!.prefill.ready.workerId],
      ['decode', stack!.decode.ready.workerId],
    ]);
    assert.equal(await page.$eval('#feed-status', (e) => e.getAttribute('data-state')), 'live');
    assert.equal(await page.$eval('#model', (e) => e.textContent), stack!.modelName);
    // The pool column shows each worker's blocks (the workers start with 64).
    assert.match(await page.$eval('#workers tbody tr[data-role="decode"]', (tr) => tr.textContent ?? ''), /\/ 64/);

    // The JSON snapshot behind it says the same and, like /health, no worker's address.
    const s = await state();
    assert.equal(s.model, stack!.modelName);
    assert.deepEqual(s.workers.map((w) => [w.role, w.healthy]).sort(), [
      ['decode', true],
      ['prefill', true],
    ]);
    assert.ok(s.workers.every((w) => !('address' in w)));
    assert.ok(!JSON.stringify(s).includes(stack!.prefill.ready.address), 'no worker address in the snapshot');
  });

  test('a chat message streams an answer through the OpenAI endpoint, and its KV transfer shows', async () => {
    await page.waitForFunction(() => !(document.getElementById('chat-send') as HTMLButtonElement).disabled);
    // Greedy, so the run is the same every time; enough tokens for the answer to arrive in several chunks.
    await page.$eval('#chat-temperature', (e) => ((e as HTMLInputElement).value = '0'));
    await page.$eval('#chat-max-tokens', (e) => ((e as HTMLInputElement).value = '24'));
    await page.type('#chat-input', 'Say something about fabrics.');
    await page.click('#chat-send');

    await page.waitForFunction(() => document.querySelector('.message.assistant')?.getAttribute('data-state') !== 'streaming');
    const answer = await page.$eval('.message.assistant', (m) => ({
      state: m.getAttribute('data-state'),
      chunks: Number(m.getAttribute('data-chunks') ?? 0),
      text: m.querySelector('.text')?.textContent ?? '',
      path: m.querySelector('.proof')?.getAttribute('data-path') ?? null,
      bytes: Number(m.querySelector('.proof')?.getAttribute('data-bytes') ?? 0),
    }));
    assert.equal(answer.state, 'done', `the answer: ${answer.text}`);
    assert.ok(answer.chunks > 1, `the answer came in ${answer.chunks} chunk(s), not streamed`);
    assert.ok(answer.text.length > 0);
    assert.ok(answer.path !== null && PATHS.includes(answer.path), `path ${answer.path}`);
    assert.ok(answer.bytes > 0);
    // The suites turn the same-host fast path off (scripts/run-tests.mjs), so the provider carries the KV.
    if (process.env.KVF_FAST_PATH === '0') assert.equal(answer.path, 'fabric');

    // The frontend recorded the same request, whose report the page lists and whose bytes the totals count.
    const s = await state();
    const served = s.recent[0]!;
    assert.equal(served.kind, 'chat');
    assert.equal(served.stream, true);
    assert.equal(served.error, null);
    assert.equal(served.kvfabric?.bytes, answer.bytes);
    assert.equal(served.kvfabric?.path, answer.path);
    assert.equal(s.stats.kv_bytes.by_path[answer.path], answer.bytes);
    assert.ok(s.stats.ttft_ms.samples >= 1 && s.stats.itl_ms.samples >= 1);

    await page.waitForFunction((id) => document.querySelector(`#recent tbody tr[data-id="${id}"]`) !== null, {}, served.id);
    const listed = await page.$eval(`#recent tbody tr[data-id="${served.id}"]`, (tr) => [tr.getAttribute('data-path'), Number(tr.getAttribute('data-bytes'))]);
    assert.deepEqual(listed, [answer.path, answer.bytes]);
    // The totals come with the next snapshot (within a second).
    await page.waitForFunction((path) => document.querySelector(`#kv-paths tbody tr[data-path="${path}"]`) !== null, {}, answer.path);
    assert.equal(Number(await page.$eval(`#kv-paths tbody tr[data-path="${answer.path}"]`, (tr) => tr.getAttribute('data-bytes'))), answer.bytes);
    await page.waitForFunction(() => document.getElementById('stat-ttft')?.textContent !== '–');
    assert.deepEqual(pageErrors, []);
  });

  test('a feed whose client goes away is stopped (its timer and subscription with it)', async () => {
    // The snapshot counts the open feeds: the page's, then five more, then the page's alone again once those five
    // clients are gone. Ending a feed is one function that clears its timer, drops its subscription and its count.
    const feeds = async () => (await state()).feeds;
    assert.equal(await feeds(), 1);
    // node:http, one connection each and no pool: fetch's pool opens a spare connection after an aborted request,
    // which would hold the server's close in the next test until the pool drops it.
    const clients = await Promise.all(
      Array.from(
        { length: 5 },
        () =>
          new Promise<ClientRequest>((resolve, reject) => {
            const req = httpGet(`${stack!.url}/dashboard/events`, { agent: false, timeout: STEP_MS }, (res) => res.once('data', () => resolve(req)));
            req.once('error', reject).once('timeout', () => req.destroy(new Error('no first event')));
          }),
      ),
    );
    assert.equal(await feeds(), 6);
    for (const req of clients) req.destroy();
    await waitFor(async () => (await feeds()) === 1, 'the five feeds stopping', 5000);
  });

  test('closing the frontend ends the open feeds at once (the page shows it), instead of waiting on them', async () => {
    // A second feed, read here, beside the page's.
    const res = await fetch(`${stack!.url}/dashboard/events`, { signal: AbortSignal.timeout(STEP_MS) });
    const reader = res.body!.getReader();
    let text = '';
    while (!/event: snapshot\ndata: [^\n]*\n\n/.test(text)) {
      const { done, value } = await deadline(reader.read(), STEP_MS, 'the first event');
      assert.ok(!done, `the feed ended before its first snapshot: ${text}`);
      text += new TextDecoder().decode(value);
    }
    assert.match(text, /^retry: \d+\n\nevent: snapshot\ndata: \{/);

    await deadline(stack!.frontend.close(), 5000, 'the frontend closing with two feeds open');
    for (;;) {
      const { done } = await deadline(reader.read(), 5000, 'the feed ending');
      if (done) break;
    }
    await page.waitForFunction(() => document.getElementById('feed-status')?.getAttribute('data-state') !== 'live', { timeout: 10_000 });
  });
});

function withoutSanitizers(env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && !['LD_PRELOAD', 'ASAN_OPTIONS', 'UBSAN_OPTIONS'].includes(k)) out[k] = v;
  return out;
}
