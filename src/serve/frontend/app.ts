// The OpenAI-compatible HTTP API (fastify): completions and chat completions, streaming (SSE in OpenAI's
// chunk format) and not, models, health, liveness and Prometheus metrics. Requests are validated by JSON
// schema; every error is an OpenAI-style error object whose `code` is a stable kvfabric code.
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Fastify, { LogController, type FastifyBaseLogger, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';

import { KvfError, type ErrorCode } from '../../fabric/errors.js';
import type { Logger } from '../../fabric/logger.js';
import type { ChatTemplate } from '../../engine/chat-template.js';
import { TextStream } from '../../engine/text-stream.js';
import type { Tokenizer } from '../../engine/tokenizer.js';
import { runFlow, type FlowContext, type KvProof } from '../flow.js';
import type { ServeMetrics } from '../metrics.js';
import { Admission } from './admission.js';
import { chatBody, completionBody, type ChatBody, type CompletionBody, type SamplingBody } from './schemas.js';

export interface AppOptions {
  modelName: string;
  contextLength: number;
  tokenizer: Tokenizer;
  template: ChatTemplate | undefined;
  flow: FlowContext;
  metrics: ServeMetrics;
  requestTimeoutMs: number;
  bodyLimit: number;
  bodyTimeoutMs: number;
  maxConnections: number;
  maxInflight: number;
  log: Logger;
}

interface Prepared {
  id: string;
  kind: 'completion' | 'chat';
  prompt: number[];
  stops: string[];
  maxTokens: number;
  sampling: { temperature: number; topK: number; topP: number; seed: number };
  stream: boolean;
  includeUsage: boolean;
}

interface Result {
  text: string;
  finishReason: 'stop' | 'length';
  completionTokens: number;
  proof: KvProof;
}

const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  KVF_ERR_BAD_REQUEST: 400,
  KVF_ERR_INVALID_ARGUMENT: 400,
  KVF_ERR_CONTEXT_OVERFLOW: 400,
  KVF_ERR_UNKNOWN_MODEL: 404,
  KVF_ERR_NO_WORKER: 503,
  KVF_ERR_POOL_EXHAUSTED: 503,
  KVF_ERR_WORKER_FAILED: 502,
  KVF_ERR_TIMEOUT: 504,
  KVF_ERR_OVERLOADED: 429,
  // The cluster refused the frontend's own call: a deployment fault, not the client's.
  KVF_ERR_UNAUTHENTICATED: 502,
  KVF_ERR_WRONG_ROLE: 502,
  KVF_ERR_BAD_HANDLE: 502,
};

export function buildApp(options: AppOptions): FastifyInstance {
  const { tokenizer, metrics, log } = options;
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // One 'request served' line with the transport proof per request instead of fastify's two per request.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.bodyLimit,
    // Node checks request deadlines every connectionsCheckingInterval (30 s by default): too coarse for a body
    // timeout of seconds, so the server is made here with a check interval to match.
    serverFactory: (handler) =>
      createServer(
        {
          requestTimeout: options.bodyTimeoutMs,
          headersTimeout: Math.min(60_000, options.bodyTimeoutMs),
          connectionsCheckingInterval: Math.min(1000, options.bodyTimeoutMs),
        },
        handler,
      ),
    // Refuse, do not strip or coerce: a field the API does not know must not be silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  app.server.maxConnections = options.maxConnections;
  const admission = new Admission(options.maxInflight);
  const endTokens = [tokenizer.eosId, tokenizer.eotId].filter((t): t is number => t !== undefined);
  // Text longer than this cannot fit the context whatever it says: refused before tokenizing it, which would hold
  // the event loop (seconds for megabytes) while /live and every other request wait.
  const maxPromptChars = options.contextLength * tokenizer.maxTokenBytes;
  const checkLength = (chars: number): void => {
    if (chars > maxPromptChars) {
      throw new KvfError(
        'KVF_ERR_CONTEXT_OVERFLOW',
        `the prompt has ${chars} characters, so at least ${Math.ceil(chars / tokenizer.maxTokenBytes)} tokens; the context holds ${options.contextLength}`,
      );
    }
  };

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err.validation) {
      const v = err.validation[0];
      const params = (v?.params ?? {}) as { additionalProperty?: string; missingProperty?: string };
      const path = v?.instancePath.replace(/^\//, '').replace(/\//g, '.') ?? '';
      if (params.additionalProperty) {
        const name = path ? `${path}.${params.additionalProperty}` : params.additionalProperty;
        return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `unknown or unsupported field '${name}'`), name);
      }
      const param = params.missingProperty ? (path ? `${path}.${params.missingProperty}` : params.missingProperty) : path || null;
      return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `invalid request body: ${err.message}`), param);
    }
    if (err instanceof KvfError) return sendError(reply, err);
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', err.message), null, err.statusCode);
    }
    log.error({ err }, 'unhandled error');
    return sendError(reply, err);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `no route ${req.method} ${req.url}`), null, 404));
  app.addHook('onResponse', (req, reply, done) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
    done();
  });

  app.get('/live', () => ({ status: 'ok' }));
  app.get('/health', (_req, reply) => {
    // No addresses: /health is unauthenticated, and where workers listen is nobody else's business.
    const workers = options.flow.router.workers().map((w) => ({
      id: w.status?.workerId ?? null,
      role: w.role,
      source: w.source,
      healthy: w.healthy,
      provider: w.status?.provider ?? null,
      rails: w.status?.rails ?? null,
      total_blocks: w.status?.totalBlocks ?? null,
      free_blocks: w.status?.freeBlocks ?? null,
      inflight: w.status?.inflight ?? null,
      queued_tokens: w.status?.queuedTokens ?? null,
      streams: w.status?.streams ?? null,
      prefill_tokens_per_s: w.status ? Math.round(w.status.prefillTokensPerS) : null,
      last_error: w.lastError === undefined ? null : w.lastError.replaceAll(w.address, '<worker>'),
    }));
    const ready = workers.some((w) => w.role === 'decode' && w.healthy);
    void reply.code(ready ? 200 : 503);
    return {
      status: ready ? 'ok' : 'unavailable',
      model: options.modelName,
      mode: options.flow.mode,
      inflight: admission.inflight,
      max_inflight: admission.max,
      workers,
    };
  });
  app.get('/metrics', async (_req, reply) => {
    void reply.header('content-type', metrics.registry.contentType);
    return metrics.text();
  });
  const model = { id: options.modelName, object: 'model', created: Math.floor(Date.now() / 1000), owned_by: 'kvfabric' };
  app.get('/v1/models', () => ({ object: 'list', data: [model] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', (req) => {
    if (req.params.id !== model.id)
      throw new KvfError('KVF_ERR_UNKNOWN_MODEL', `model '${req.params.id}' is not served here; this deployment serves '${model.id}'`);
    return model;
  });

  app.post<{ Body: CompletionBody }>('/v1/completions', { schema: { body: completionBody } }, (req, reply) => {
    const body = req.body;
    let prompt: number[];
    if (typeof body.prompt === 'string' || typeof body.prompt[0] === 'string') {
      const text = typeof body.prompt === 'string' ? body.prompt : (body.prompt[0] as string);
      checkLength(text.length);
      prompt = tokenizer.encode(text);
    } else {
      prompt = body.prompt as number[];
      const bad = prompt.find((t) => t >= tokenizer.vocabSize);
      if (bad !== undefined) throw new KvfError('KVF_ERR_BAD_REQUEST', `token id ${bad} is outside the vocabulary (${tokenizer.vocabSize})`);
    }
    return serve(reply, prepare('completion', body, prompt, body.max_tokens ?? 16));
  });

  app.post<{ Body: ChatBody }>('/v1/chat/completions', { schema: { body: chatBody } }, (req, reply) => {
    const body = req.body;
    if (!options.template) throw new KvfError('KVF_ERR_BAD_REQUEST', `model '${options.modelName}' has no chat template; use /v1/completions`);
    const messages = body.messages.map((m) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
    }));
    checkLength(messages.reduce((n, m) => n + m.content.length, 0));
    const prompt = options.template.encode(tokenizer, messages);
    return serve(reply, prepare('chat', body, prompt, body.max_completion_tokens ?? body.max_tokens ?? undefined));
  });

  function prepare(kind: Prepared['kind'], body: SamplingBody, prompt: number[], maxTokens: number | undefined): Prepared {
    if (body.model !== options.modelName) {
      throw new KvfError('KVF_ERR_UNKNOWN_MODEL', `model '${body.model}' is not served here; this deployment serves '${options.modelName}'`);
    }
    if (prompt.length === 0) throw new KvfError('KVF_ERR_BAD_REQUEST', 'the prompt has no tokens');
    const room = options.contextLength - prompt.length;
    if (room < 1) throw new KvfError('KVF_ERR_CONTEXT_OVERFLOW', `the prompt has ${prompt.length} tokens; the context holds ${options.contextLength}`);
    return {
      id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`,
      kind,
      prompt,
      stops: body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop,
      maxTokens: Math.min(maxTokens ?? room, room),
      // OpenAI's defaults: temperature 1, top_p 1.
      sampling: { temperature: body.temperature ?? 1, topK: body.top_k ?? 0, topP: body.top_p ?? 1, seed: body.seed ?? 0 },
      stream: body.stream === true,
      includeUsage: body.stream_options?.include_usage === true,
    };
  }

  /** Runs the request, calling onText with each final piece; ends at a stop sequence by cancelling the flow. */
  async function run(p: Prepared, reply: FastifyReply, onText: (text: string) => void): Promise<Result> {
    const started = performance.now();
    let last = 0;
    const text = new TextStream(tokenizer, p.stops);
    let tokens = 0;
    const cancel = new AbortController();
    const timeout = setTimeout(
      () => cancel.abort(new KvfError('KVF_ERR_TIMEOUT', `the request did not finish within ${options.requestTimeoutMs} ms`)),
      options.requestTimeoutMs,
    );
    const onClose = (): void => {
      if (!reply.raw.writableFinished) cancel.abort(new KvfError('KVF_ERR_CLOSED', 'the client went away'));
    };
    reply.raw.on('close', onClose);
    metrics.inflight.inc();
    metrics.inputTokens.inc(p.prompt.length);
    try {
      const outcome = await runFlow(
        options.flow,
        { requestId: p.id, prompt: p.prompt, sampling: p.sampling, maxTokens: p.maxTokens, endTokens, signal: cancel.signal },
        (token) => {
          const now = performance.now();
          if (tokens === 0) metrics.ttft.observe((now - started) / 1000);
          else metrics.itl.observe((now - last) / 1000);
          last = now;
          tokens++;
          const piece = text.push(token);
          if (piece) onText(piece);
          return !text.stopped;
        },
      );
      const rest = text.finish();
      if (rest) onText(rest);
      record(p.id, outcome.proof);
      metrics.outputTokens.inc(tokens);
      return { text: text.text, finishReason: outcome.finishReason, completionTokens: tokens, proof: outcome.proof };
    } finally {
      clearTimeout(timeout);
      reply.raw.off('close', onClose);
      metrics.inflight.dec();
    }
  }
  function record(requestId: string, proof: KvProof): void {
    if (proof.op) {
      metrics.kvBytes.inc({ backend: proof.backend, provider: proof.provider, op: proof.op }, proof.bytes);
      metrics.kvTransfer.observe({ provider: proof.provider, op: proof.op }, proof.transfer_ms / 1000);
    }
    if (proof.mode === 'fallback') metrics.fallbacks.inc();
    log.info({ requestId, ...proof }, 'request served');
  }

  /** Admits the request (or refuses it at once: 429), then answers it. */
  async function serve(reply: FastifyReply, p: Prepared): Promise<unknown> {
    let leave: () => void;
    try {
      leave = admission.enter();
    } catch (err) {
      metrics.refused.inc();
      throw err;
    }
    try {
      return await respond(reply, p);
    } finally {
      leave();
    }
  }

  async function respond(reply: FastifyReply, p: Prepared): Promise<unknown> {
    const created = Math.floor(Date.now() / 1000);
    const object = p.kind === 'chat' ? 'chat.completion' : 'text_completion';
    const usage = (r: Result) => ({
      prompt_tokens: p.prompt.length,
      completion_tokens: r.completionTokens,
      total_tokens: p.prompt.length + r.completionTokens,
    });
    if (!p.stream) {
      const r = await run(p, reply, () => {});
      const choice =
        p.kind === 'chat'
          ? { index: 0, message: { role: 'assistant', content: r.text }, logprobs: null, finish_reason: r.finishReason }
          : { index: 0, text: r.text, logprobs: null, finish_reason: r.finishReason };
      return { id: p.id, object, created, model: options.modelName, choices: [choice], usage: usage(r), kvfabric: r.proof };
    }
    const chunkObject = p.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
    const raw = reply.raw;
    const send = (data: unknown): void => {
      if (!raw.headersSent) {
        reply.hijack();
        raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
      }
      raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    };
    const chunk = (delta: string | null, finishReason: string | null, extra: object = {}) => ({
      id: p.id,
      object: chunkObject,
      created,
      model: options.modelName,
      choices: [
        p.kind === 'chat'
          ? { index: 0, delta: delta === null ? {} : { content: delta }, logprobs: null, finish_reason: finishReason }
          : { index: 0, text: delta ?? '', logprobs: null, finish_reason: finishReason },
      ],
      ...extra,
    });
    let r: Result;
    try {
      if (p.kind === 'chat')
        send({ ...chunk('', null), choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
      r = await run(p, reply, (text) => send(chunk(text, null)));
    } catch (err) {
      if (!raw.headersSent) throw err;
      const e = asKvf(err);
      if (!raw.destroyed) {
        send({ error: errorObject(e, null) });
        raw.end();
      }
      // A client that went away is routine; anything else is worth a warning.
      log[e.code === 'KVF_ERR_CLOSED' ? 'debug' : 'warn']({ requestId: p.id, code: e.code, err: e.message }, 'stream failed');
      return reply;
    }
    send(chunk(null, r.finishReason, { kvfabric: r.proof }));
    if (p.includeUsage) send({ id: p.id, object: chunkObject, created, model: options.modelName, choices: [], usage: usage(r), kvfabric: r.proof });
    send('[DONE]');
    raw.end();
    return reply;
  }

  return app;
}

function asKvf(err: unknown): KvfError {
  return err instanceof KvfError ? err : new KvfError('KVF_ERR_WORKER_FAILED', (err as Error).message, { cause: err });
}

function errorObject(err: KvfError, param: string | null) {
  const status = HTTP_STATUS[err.code] ?? 500;
  const type =
    status === 400 || status === 404 ? 'invalid_request_error' : status === 429 ? 'rate_limit_error' : status === 503 ? 'service_unavailable' : 'server_error';
  return { message: err.message, type, param, code: err.code };
}

function sendError(reply: FastifyReply, err: Error, param: string | null = null, status?: number): FastifyReply {
  const e = asKvf(err);
  if (e.code === 'KVF_ERR_OVERLOADED') void reply.header('retry-after', '1');
  return reply.code(status ?? HTTP_STATUS[e.code] ?? 500).send({ error: errorObject(e, param) });
}
