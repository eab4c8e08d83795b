// POST /v1/completions and /v1/chat/completions: a request is tokenized and checked (prepare), admitted or
// refused at once (serve), run through the disaggregated flow with text streamed through stop sequences (run),
// and answered as one JSON object or as SSE chunks (respond).
import { randomUUID } from 'node:crypto';

import type { FastifyInstance, FastifyReply } from 'fastify';

import { KvfError } from '../../../common/errors.js';
import { ATTR, type Span } from '../../../common/tracing.js';
import { contextRoom } from '../../../engine/decode-loop.js';
import { TextStream } from '../../../engine/text-stream.js';
import { runFlow, type KvProof } from '../../flow.js';
import { asKvf, errorObject } from '../errors.js';
import { requestFailed, requestTrace } from '../request-trace.js';
import { chatBody, completionBody, type ChatBody, type CompletionBody, type SamplingBody } from '../schemas.js';
import { sseStream } from '../sse.js';
import type { RouteContext } from './context.js';

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

export function completionRoutes(app: FastifyInstance, ctx: RouteContext): void {
  const { options } = ctx;
  const { tokenizer } = options;
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
    return serve(ctx, reply, prepare(ctx, 'completion', body, prompt, body.max_tokens ?? 16));
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
    return serve(ctx, reply, prepare(ctx, 'chat', body, prompt, body.max_completion_tokens ?? body.max_tokens ?? undefined));
  });
}

function prepare({ options }: RouteContext, kind: Prepared['kind'], body: SamplingBody, prompt: number[], maxTokens: number | undefined): Prepared {
  if (body.model !== options.modelName) {
    throw new KvfError('KVF_ERR_UNKNOWN_MODEL', `model '${body.model}' is not served here; this deployment serves '${options.modelName}'`);
  }
  if (prompt.length === 0) throw new KvfError('KVF_ERR_BAD_REQUEST', 'the prompt has no tokens');
  const room = contextRoom(options.contextLength, prompt.length);
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

/** Admits the request (or refuses it at once: 429), then answers it. */
async function serve(ctx: RouteContext, reply: FastifyReply, p: Prepared): Promise<unknown> {
  let leave: () => void;
  try {
    leave = ctx.admission.enter();
  } catch (err) {
    ctx.options.metrics.refused.inc();
    throw err;
  }
  try {
    return await (p.stream ? respondStreaming(ctx, reply, p) : respond(ctx, reply, p));
  } finally {
    leave();
  }
}

/** Runs the request, calling onText with each final piece; ends at a stop sequence by cancelling the flow. */
async function run(ctx: RouteContext, p: Prepared, reply: FastifyReply, onText: (text: string) => void): Promise<Result> {
  const { options, recent } = ctx;
  const { metrics, tokenizer } = options;
  const endTokens = [tokenizer.eosId, tokenizer.eotId].filter((t): t is number => t !== undefined);
  const started = performance.now();
  let last = 0;
  let ttftMs: number | null = null;
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
  // What the dashboard lists (recent.ts), whether the request completed or not.
  const finished = (error: string | null, proof: KvProof | null) =>
    recent.add({
      id: p.id,
      kind: p.kind,
      finished_at: Date.now(),
      stream: p.stream,
      prompt_tokens: p.prompt.length,
      completion_tokens: tokens,
      ttft_ms: ttftMs === null ? null : Math.round(ttftMs * 1000) / 1000,
      duration_ms: Math.round((performance.now() - started) * 1000) / 1000,
      error,
      kvfabric: proof,
    });
  const trace = requestTrace(reply.request);
  if (trace?.span.isRecording())
    trace.span.setAttributes({
      [ATTR.requestId]: p.id,
      'gen_ai.request.model': options.modelName,
      'gen_ai.usage.input_tokens': p.prompt.length,
      'gen_ai.request.max_tokens': p.maxTokens,
      'kvfabric.stream': p.stream,
    });
  try {
    const request = {
      requestId: p.id,
      prompt: p.prompt,
      sampling: p.sampling,
      maxTokens: p.maxTokens,
      endTokens,
      signal: cancel.signal,
      ...(trace ? { trace: trace.context } : {}),
    };
    const outcome = await runFlow(options.flow, request, (token) => {
      const now = performance.now();
      if (tokens === 0) {
        ttftMs = now - started;
        metrics.ttft.observe(ttftMs / 1000);
      } else {
        metrics.itl.observe((now - last) / 1000);
        recent.interTokenGap(now - last);
      }
      last = now;
      tokens++;
      const piece = text.push(token);
      if (piece) onText(piece);
      return !text.stopped;
    });
    const rest = text.finish();
    if (rest) onText(rest);
    record(ctx, p.id, outcome.proof);
    if (trace) traceOutcome(trace.span, outcome.proof, tokens, outcome.finishReason);
    metrics.outputTokens.inc(tokens);
    finished(null, outcome.proof);
    return { text: text.text, finishReason: outcome.finishReason, completionTokens: tokens, proof: outcome.proof };
  } catch (err) {
    finished(asKvf(err).code, null);
    throw err;
  } finally {
    clearTimeout(timeout);
    reply.raw.off('close', onClose);
    metrics.inflight.dec();
  }
}

/** The transport proof in metrics and in one 'request served' log line. */
function record({ options }: RouteContext, requestId: string, proof: KvProof): void {
  const { metrics, log } = options;
  if (proof.op) {
    metrics.kvBytes.inc({ backend: proof.backend, provider: proof.provider, op: proof.op }, proof.bytes);
    metrics.kvTransfer.observe({ provider: proof.provider, op: proof.op }, proof.transfer_ms / 1000);
  }
  if (proof.mode === 'fallback') metrics.fallbacks.inc();
  if (proof.mode === 'local') metrics.localPrefills.inc({ reason: localPrefillLabel(proof.fallback_reason ?? '') });
  if (proof.prefill_reused_bytes) metrics.reusedBytes.inc({ side: 'prefill' }, proof.prefill_reused_bytes);
  if (proof.decode_reused_bytes) metrics.reusedBytes.inc({ side: 'decode' }, proof.decode_reused_bytes);
  log.info({ requestId, ...proof }, 'request served');
}

/** The request's span gets what the response says: tokens, finish reason and the proof of transport. */
function traceOutcome(span: Span, proof: KvProof, tokens: number, finishReason: string): void {
  if (!span.isRecording()) return;
  span.setAttributes({
    'gen_ai.usage.output_tokens': tokens,
    'gen_ai.response.finish_reasons': [finishReason],
    [ATTR.mode]: proof.mode,
    [ATTR.kvBytes]: proof.bytes,
    [ATTR.kvProvider]: proof.provider,
    [ATTR.kvRails]: proof.rails,
    'kvfabric.decode_worker': proof.decode_worker,
    'kvfabric.migrations': proof.migrations.length,
  });
  if (proof.path) span.setAttribute(ATTR.kvPath, proof.path);
  if (proof.op) span.setAttribute(ATTR.kvOp, proof.op);
  if (proof.prefill_worker) span.setAttribute('kvfabric.prefill_worker', proof.prefill_worker);
  if (proof.fallback_reason) span.setAttribute(ATTR.fallbackReason, proof.fallback_reason);
}

const usage = (p: Prepared, r: Result) => ({
  prompt_tokens: p.prompt.length,
  completion_tokens: r.completionTokens,
  total_tokens: p.prompt.length + r.completionTokens,
});

/** The whole answer as one JSON object. */
async function respond(ctx: RouteContext, reply: FastifyReply, p: Prepared): Promise<unknown> {
  const created = Math.floor(Date.now() / 1000);
  const r = await run(ctx, p, reply, () => {});
  const choice =
    p.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: r.text }, logprobs: null, finish_reason: r.finishReason }
      : { index: 0, text: r.text, logprobs: null, finish_reason: r.finishReason };
  const object = p.kind === 'chat' ? 'chat.completion' : 'text_completion';
  return { id: p.id, object, created, model: ctx.options.modelName, choices: [choice], usage: usage(p, r), kvfabric: r.proof };
}

/** The answer as SSE chunks; a failure after the first chunk ends the stream with an error event. */
async function respondStreaming(ctx: RouteContext, reply: FastifyReply, p: Prepared): Promise<unknown> {
  const { modelName, log } = ctx.options;
  const created = Math.floor(Date.now() / 1000);
  const chunkObject = p.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  const sse = sseStream(reply);
  const chunk = (delta: string | null, finishReason: string | null, extra: object = {}) => ({
    id: p.id,
    object: chunkObject,
    created,
    model: modelName,
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
      sse.send({ ...chunk('', null), choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] });
    r = await run(ctx, p, reply, (text) => sse.send(chunk(text, null)));
  } catch (err) {
    if (!sse.started) throw err;
    const e = asKvf(err);
    requestFailed(reply.request, e);
    if (!sse.destroyed) {
      sse.send({ error: errorObject(e, null) });
      sse.end();
    }
    // A client that went away is routine; anything else is worth a warning.
    log[e.code === 'KVF_ERR_CLOSED' ? 'debug' : 'warn']({ requestId: p.id, code: e.code, err: e.message }, 'stream failed');
    return reply;
  }
  sse.send(chunk(null, r.finishReason, { kvfabric: r.proof }));
  if (p.includeUsage) sse.send({ id: p.id, object: chunkObject, created, model: modelName, choices: [], usage: usage(p, r), kvfabric: r.proof });
  sse.send('[DONE]');
  sse.end();
  return reply;
}

/** The metric label of a conditional-disaggregation reason (flow.ts localPrefillReason). */
function localPrefillLabel(reason: string): string {
  if (reason.startsWith('prefill saturated')) return 'prefill-saturated';
  if (reason.startsWith('short prompt')) return 'short-prompt';
  return 'cached-prefix';
}
