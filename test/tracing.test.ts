// Traces against a real OTLP receiver: an HTTP server here that takes what the OpenTelemetry exporters POST to
// /v1/traces. `kvfabric serve` (three processes) exports to it over OTLP/HTTP JSON; one chat completion through the
// OpenAI client must give one trace whose frontend, prefill and decode spans hang together through the W3C context
// carried in gRPC metadata, with the KV transfer's proof on its span, and a failing request must leave ERROR spans
// with the kvfabric code. Spans still queued when the stack stops are flushed before it exits; the default protocol
// (http/protobuf) arrives too, and a process that traces exits by itself. Without an endpoint nothing is set up.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { initTracing, ROOT_CONTEXT, startSpan, tracingConfigured } from '../src/common/tracing.js';
import { ROOT, startCli, stop, tinyModel, waitFor, type Proc } from './helpers/serve.js';

const model = tinyModel();

/** A span as the receiver decoded it from OTLP JSON, with its resource's service.name. */
interface ReceivedSpan {
  service: string;
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  /** OTLP's SpanKind: 1 internal, 2 server, 3 client. */
  kind: number;
  attributes: Record<string, unknown>;
  /** OTLP's status code: 0 unset, 1 ok, 2 error. */
  status: { code: number; message: string };
}

const KIND = { internal: 1, server: 2, client: 3 } as const;
const ERROR = 2;

interface AnyValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: number | string;
  doubleValue?: number;
  arrayValue?: { values?: AnyValue[] };
}

function value(v: AnyValue | undefined): unknown {
  if (!v) return undefined;
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.boolValue !== undefined) return v.boolValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  if (v.arrayValue) return (v.arrayValue.values ?? []).map(value);
  return undefined;
}

const attributes = (list: { key: string; value: AnyValue }[] = []): Record<string, unknown> => Object.fromEntries(list.map((a) => [a.key, value(a.value)]));

/** OTLP JSON carries ids as hex (the JS exporter) or base64 (the protobuf JSON mapping): hex either way. */
const hexId = (id: string | undefined): string => (!id ? '' : /^[0-9a-f]+$/.test(id) ? id : Buffer.from(id, 'base64').toString('hex'));

interface OtlpJson {
  resourceSpans?: {
    resource?: { attributes?: { key: string; value: AnyValue }[] };
    scopeSpans?: {
      spans?: {
        traceId: string;
        spanId: string;
        parentSpanId?: string;
        name: string;
        kind: number;
        attributes?: { key: string; value: AnyValue }[];
        status?: { code?: number; message?: string };
      }[];
    }[];
  }[];
}

/** An OTLP/HTTP receiver on 127.0.0.1: JSON requests are decoded into spans, protobuf ones kept as bytes. */
class Receiver {
  readonly spans: ReceivedSpan[] = [];
  readonly protobuf: Buffer[] = [];
  readonly #server: Server;
  url = '';

  constructor() {
    this.#server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks);
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        if ((req.headers['content-type'] ?? '').includes('application/json')) {
          this.#take(JSON.parse(body.toString('utf8')) as OtlpJson);
          res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
        } else {
          this.protobuf.push(body);
          res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end();
        }
      });
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    const address = this.#server.address();
    this.url = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  }

  close(): Promise<void> {
    this.#server.closeAllConnections();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #take(body: OtlpJson): void {
    for (const rs of body.resourceSpans ?? []) {
      const service = String(attributes(rs.resource?.attributes)['service.name']);
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          this.spans.push({
            service,
            traceId: hexId(s.traceId),
            spanId: hexId(s.spanId),
            parentSpanId: hexId(s.parentSpanId),
            name: s.name,
            kind: s.kind,
            attributes: attributes(s.attributes),
            status: { code: s.status?.code ?? 0, message: s.status?.message ?? '' },
          });
        }
      }
    }
  }

  trace(traceId: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }
}

/** The one span of `spans` matching, failing the test with what there is when there is not exactly one. */
function one(spans: ReceivedSpan[], service: string, name: string, kind?: number): ReceivedSpan {
  const found = spans.filter((s) => s.service === service && s.name === name && (kind === undefined || s.kind === kind));
  assert.equal(found.length, 1, `one ${service} span '${name}' in\n${spans.map((s) => `${s.service} ${s.name} ${s.kind}`).join('\n')}`);
  return found[0]!;
}

/** Waits (with a deadline) until the trace has the spans named `service/name`. */
async function traceWith(receiver: Receiver, traceId: () => string | undefined, names: string[]): Promise<ReceivedSpan[]> {
  await waitFor(
    () => {
      const id = traceId();
      if (!id) return false;
      const spans = receiver.trace(id);
      return names.every((n) => spans.some((s) => `${s.service}/${s.name}` === n));
    },
    `spans ${names.join(', ')}`,
    15_000,
  );
  return receiver.trace(traceId()!);
}

const otelEnv = (receiver: Receiver, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
  OTEL_BSP_SCHEDULE_DELAY: '100',
  ...extra,
});

// Five blocks of 32 positions per worker: a short chat (about 100 tokens with the template) fits; a 200-token prompt
// fits neither pool.
const SERVE = ['serve', '--model', model, '--provider', 'tcp', '--listen', '127.0.0.1:0', '--threads', '1', '--blocks', '5'];

describe('traces of kvfabric serve over OTLP', () => {
  const receiver = new Receiver();
  let serve: Proc;
  let client: OpenAI;

  before(async () => {
    await receiver.start();
    serve = await startCli(SERVE, otelEnv(receiver));
    client = new OpenAI({ baseURL: `${serve.ready.address}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
  });

  after(async () => {
    if (serve) await stop(serve);
    await receiver.close();
  });

  test('one chat completion is one trace: frontend, router, prefill, KV transfer and decode spans, linked parent to child', async () => {
    const res = await client.chat.completions.create({ model: 'tiny-llama', messages: [{ role: 'user', content: 'hello' }], max_tokens: 4, temperature: 0 });
    const proof = (
      res as unknown as { kvfabric: { bytes: number; path: string; provider: string; rails: number[]; prefill_worker: string; decode_worker: string } }
    ).kvfabric;
    const rootOf = () => receiver.spans.find((s) => s.name === 'POST /v1/chat/completions' && s.attributes['kvfabric.request_id'] === res.id);
    const spans = await traceWith(receiver, () => rootOf()?.traceId, [
      'kvfabric-frontend/POST /v1/chat/completions',
      'kvfabric-prefill/prefill',
      'kvfabric-decode/decode',
      'kvfabric-decode/kv.transfer',
    ]);
    const root = rootOf()!;
    assert.equal(root.service, 'kvfabric-frontend');
    assert.equal(root.kind, KIND.server);
    assert.equal(root.parentSpanId, '', 'the request span is the root');
    assert.equal(root.attributes['http.response.status_code'], 200);
    assert.equal(root.attributes['gen_ai.usage.output_tokens'], res.usage!.completion_tokens);
    assert.equal(root.attributes['kvfabric.kv.bytes'], proof.bytes);
    assert.deepEqual(new Set(spans.map((s) => s.service)), new Set(['kvfabric-frontend', 'kvfabric-prefill', 'kvfabric-decode']));

    // Every span but the root has its parent in the trace: nothing dangles, nothing starts a trace of its own.
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    for (const s of spans) if (s !== root) assert.ok(byId.has(s.parentSpanId), `${s.service} ${s.name}: parent ${s.parentSpanId} is in the trace`);
    const parent = (s: ReceivedSpan): ReceivedSpan => byId.get(s.parentSpanId)!;

    const picks = spans.filter((s) => s.name === 'router.pick');
    assert.deepEqual(picks.map((s) => s.attributes['kvfabric.role']).sort(), ['decode', 'prefill']);
    for (const p of picks) {
      assert.equal(parent(p), root);
      assert.ok(['prefill-0', 'decode-0'].includes(p.attributes['kvfabric.worker.id'] as string), JSON.stringify(p.attributes));
      assert.equal(typeof p.attributes['kvfabric.router.reason'], 'string');
    }

    // The frontend's calls (CLIENT) under the request; each worker's span (SERVER) under the call that reached it.
    const prefillCall = one(spans, 'kvfabric-frontend', 'prefill', KIND.client);
    const decodeCall = one(spans, 'kvfabric-frontend', 'decode', KIND.client);
    assert.equal(parent(prefillCall), root);
    assert.equal(parent(decodeCall), root);
    const prefill = one(spans, 'kvfabric-prefill', 'prefill', KIND.server);
    const decode = one(spans, 'kvfabric-decode', 'decode', KIND.server);
    assert.equal(parent(prefill), prefillCall);
    assert.equal(parent(decode), decodeCall);
    assert.equal(prefill.attributes['kvfabric.worker.id'], proof.prefill_worker);
    assert.equal(decode.attributes['kvfabric.worker.id'], proof.decode_worker);
    assert.equal(prefill.attributes['kvfabric.prompt_tokens'], res.usage!.prompt_tokens);
    assert.ok((prefill.attributes['kvfabric.kv.blocks'] as number) > 0);
    assert.equal(decode.attributes['kvfabric.hand_off'], 'pull');
    assert.equal(decode.attributes['kvfabric.local_prefill'], false);
    // The prefill worker's token reaches the client first; the decode worker streams the rest.
    assert.equal(decode.attributes['kvfabric.completion_tokens'], res.usage!.completion_tokens);
    assert.equal(decodeCall.attributes['kvfabric.streamed_tokens'], res.usage!.completion_tokens - 1);

    const transfer = one(spans, 'kvfabric-decode', 'kv.transfer');
    assert.equal(parent(transfer), decode);
    assert.equal(transfer.attributes['kvfabric.kv.bytes'], proof.bytes);
    assert.ok((transfer.attributes['kvfabric.kv.bytes'] as number) > 0);
    assert.equal(transfer.attributes['kvfabric.kv.path'], proof.path);
    if (process.env.KVF_FAST_PATH === '0') assert.equal(proof.path, 'fabric'); // as npm test runs it
    assert.match(transfer.attributes['kvfabric.kv.provider'] as string, /^tcp/);
    assert.equal(transfer.attributes['kvfabric.kv.provider'], proof.provider);
    assert.equal(transfer.attributes['kvfabric.kv.mode'], 'pull');
    assert.equal(transfer.attributes['kvfabric.kv.op'], 'READ');
    assert.equal(transfer.attributes['kvfabric.kv.peer_worker_id'], 'prefill-0');
    assert.deepEqual(transfer.attributes['kvfabric.kv.rails'], proof.rails);
    assert.ok((transfer.attributes['kvfabric.kv.blocks'] as number) > 0);
    assert.equal(transfer.attributes['kvfabric.fallback_reason'], undefined);
    assert.ok(
      spans.every((s) => s.status.code !== ERROR),
      'no span failed',
    );
  });

  test("a request that fails in the workers leaves ERROR spans with the kvfabric code, under the client's traceparent", async () => {
    // The client's own span: the frontend's becomes its child, in the client's trace.
    const traceId = randomBytes(16).toString('hex');
    const clientSpanId = randomBytes(8).toString('hex');
    const prompt = Array.from({ length: 200 }, (_, i) => 1 + (i % 250));
    await assert.rejects(
      client.completions.create({ model: 'tiny-llama', prompt, max_tokens: 2 }, { headers: { traceparent: `00-${traceId}-${clientSpanId}-01` } }),
      (err: InstanceType<typeof OpenAI.APIError>) => err.status === 503 && err.code === 'KVF_ERR_POOL_EXHAUSTED',
    );
    const spans = await traceWith(receiver, () => traceId, ['kvfabric-frontend/POST /v1/completions', 'kvfabric-prefill/prefill', 'kvfabric-decode/decode']);
    const root = one(spans, 'kvfabric-frontend', 'POST /v1/completions');
    assert.equal(root.parentSpanId, clientSpanId);
    const failed = (s: ReceivedSpan, code: string): void => {
      assert.equal(s.status.code, ERROR, `${s.service} ${s.name} is an ERROR span`);
      assert.equal(s.attributes['kvfabric.error.code'], code, `${s.service} ${s.name}`);
      assert.match(s.status.message, new RegExp(code));
    };
    failed(root, 'KVF_ERR_POOL_EXHAUSTED');
    assert.equal(root.attributes['http.response.status_code'], 503);
    // The prefill worker had no room: its span and the frontend's call fail, and the decode worker is asked to
    // prefill locally (the fallback reason on its span), which fails the same way.
    failed(one(spans, 'kvfabric-prefill', 'prefill', KIND.server), 'KVF_ERR_POOL_EXHAUSTED');
    failed(one(spans, 'kvfabric-frontend', 'prefill', KIND.client), 'KVF_ERR_POOL_EXHAUSTED');
    const decode = one(spans, 'kvfabric-decode', 'decode', KIND.server);
    failed(decode, 'KVF_ERR_POOL_EXHAUSTED');
    assert.match(decode.attributes['kvfabric.fallback_reason'] as string, /KV block pool|free block|pool/i);
    failed(one(spans, 'kvfabric-frontend', 'decode', KIND.client), 'KVF_ERR_POOL_EXHAUSTED');
  });

  test('a request the frontend refuses is an ERROR span too, with its code and no worker span', async () => {
    const traceId = randomBytes(16).toString('hex');
    await assert.rejects(
      client.completions.create(
        { model: 'no-such-model', prompt: 'hello', max_tokens: 2 },
        { headers: { traceparent: `00-${traceId}-${randomBytes(8).toString('hex')}-01` } },
      ),
      (err: InstanceType<typeof OpenAI.APIError>) => err.status === 404 && err.code === 'KVF_ERR_UNKNOWN_MODEL',
    );
    const [root] = await traceWith(receiver, () => traceId, ['kvfabric-frontend/POST /v1/completions']);
    assert.equal(root!.status.code, ERROR);
    assert.equal(root!.attributes['kvfabric.error.code'], 'KVF_ERR_UNKNOWN_MODEL');
    await new Promise((r) => setTimeout(r, 300)); // a batch's delay: a worker span would have arrived by now
    assert.deepEqual(
      receiver.trace(traceId).map((s) => s.service),
      ['kvfabric-frontend'],
    );
  });
});

describe('tracing shutdown and configuration', () => {
  const receiver = new Receiver();
  before(() => receiver.start());
  after(() => receiver.close());

  test('spans still queued when the stack stops are flushed before each process exits', async () => {
    // A batch delay far beyond the test: only the flush at shutdown can deliver them.
    const serve = await startCli(SERVE, otelEnv(receiver, { OTEL_BSP_SCHEDULE_DELAY: '600000' }));
    let id: string;
    try {
      const res = await fetch(`${serve.ready.address}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model: 'tiny-llama', prompt: 'hello', max_tokens: 3, temperature: 0 }),
      });
      id = ((await res.json()) as { id: string }).id;
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(receiver.spans.length, 0, 'nothing exported before shutdown');
    } finally {
      serve.child.kill('SIGTERM');
    }
    const exited = await Promise.race([serve.exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 20_000))]);
    assert.deepEqual(exited, { code: 0, signal: null });
    const root = receiver.spans.find((s) => s.attributes['kvfabric.request_id'] === id);
    assert.ok(root, 'the request span arrived');
    assert.deepEqual(new Set(receiver.trace(root.traceId).map((s) => s.service)), new Set(['kvfabric-frontend', 'kvfabric-prefill', 'kvfabric-decode']));
  });

  test('the default protocol is http/protobuf; a process that traces exits by itself, its spans flushed', async () => {
    const script = [
      `import { initTracing, ROOT_CONTEXT, startSpan } from ${JSON.stringify(join(ROOT, 'dist', 'common', 'tracing.js'))};`,
      `if (!(await initTracing('prefill', undefined, { 'kvfabric.worker.id': 'probe-worker' }))) process.exit(3);`,
      `startSpan('probe-span', ROOT_CONTEXT).end();`,
    ].join('\n');
    const before = receiver.protobuf.length;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: '', OTEL_BSP_SCHEDULE_DELAY: '600000' },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const code = await Promise.race([exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 15_000))]);
    if (code === 'late') child.kill('SIGKILL');
    assert.equal(code, 0, 'exited by itself');
    const sent = Buffer.concat(receiver.protobuf.slice(before));
    for (const text of ['probe-span', 'kvfabric-prefill', 'probe-worker']) assert.ok(sent.includes(text), `${text} in the protobuf payload`);
  });

  test('without an OTLP endpoint nothing is set up, and spans are non-recording no-ops', async () => {
    assert.equal(tracingConfigured({}), false);
    assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_SDK_DISABLED: 'true' }), false);
    assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318', OTEL_TRACES_EXPORTER: 'none' }), false);
    assert.equal(tracingConfigured({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' }), true);
    assert.equal(await initTracing('frontend', undefined, {}, {}), false);
    const span = startSpan('nothing', ROOT_CONTEXT);
    assert.equal(span.isRecording(), false);
    span.end();
  });
});
