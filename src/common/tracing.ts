// Traces (OpenTelemetry): one trace per request, across the frontend, the router, the prefill and decode workers
// and the KV transfer between them. The spans are made through @opentelemetry/api alone: until a tracer provider
// is registered they are non-recording no-ops that cost a few allocations, and an application that embeds
// kvfabric and registers its own SDK gets them too. The serving processes register one (initTracing) only when
// an OTLP endpoint is configured by the standard variables (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); the SDK and exporter are loaded only then. Span and attribute names:
// docs/design.md, "Traces".
// Trace context crosses processes as W3C `traceparent` in gRPC metadata (injectMetadata, extractMetadata), so a
// worker's spans are children of the frontend's. Contexts are passed explicitly (no context manager needed).
import {
  diag,
  DiagLogLevel,
  INVALID_SPAN_CONTEXT,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_SERVICE_NAME } from '@opentelemetry/semantic-conventions';

import { isErrorCode } from './error-registry.js';
import type { Logger } from './logger.js';

export { ROOT_CONTEXT, SpanKind, type Context, type Span };

export const tracer = trace.getTracer('kvfabric');

/** kvfabric's own attribute names (the semantic conventions' where one fits: http.*, rpc.*, server.address, error.type). */
export const ATTR = {
  errorCode: 'kvfabric.error.code',
  requestId: 'kvfabric.request_id',
  role: 'kvfabric.role',
  workerId: 'kvfabric.worker.id',
  mode: 'kvfabric.mode',
  promptTokens: 'kvfabric.prompt_tokens',
  completionTokens: 'kvfabric.completion_tokens',
  finishReason: 'kvfabric.finish_reason',
  fallbackReason: 'kvfabric.fallback_reason',
  attempt: 'kvfabric.attempt',
  kvBytes: 'kvfabric.kv.bytes',
  kvPath: 'kvfabric.kv.path',
  kvProvider: 'kvfabric.kv.provider',
  kvBackend: 'kvfabric.kv.backend',
  kvRails: 'kvfabric.kv.rails',
  kvBlocks: 'kvfabric.kv.blocks',
  kvMode: 'kvfabric.kv.mode',
  kvOp: 'kvfabric.kv.op',
  kvDescriptors: 'kvfabric.kv.descriptors',
  kvDurationMs: 'kvfabric.kv.duration_ms',
  kvGbps: 'kvfabric.kv.gbps',
  kvExpress: 'kvfabric.kv.express',
  kvPeerWorker: 'kvfabric.kv.peer_worker_id',
  kvTokens: 'kvfabric.kv.tokens',
} as const;

/** RPC attributes of a Worker call (rpc.system.name, rpc.method as in the semantic conventions). */
export function rpcAttributes(method: string): Attributes {
  return { 'rpc.system.name': 'grpc', 'rpc.method': `kvfabric.v1.Worker/${method}` };
}

/** A span and the context its children start under. */
export interface Traced {
  span: Span;
  context: Context;
}

/** No span: for work that is not traced (its attributes and ending go nowhere). */
export const NOT_TRACED: Traced = { span: trace.wrapSpanContext(INVALID_SPAN_CONTEXT), context: ROOT_CONTEXT };

/**
 * A span, child of `parent` (ROOT_CONTEXT: a new trace). `attributes` is called only when the span records: without
 * a provider (or when sampled out) starting a span costs no attribute objects.
 */
export function startSpan(name: string, parent: Context, kind: SpanKind = SpanKind.INTERNAL, attributes?: () => Attributes): Span {
  const span = tracer.startSpan(name, { kind }, parent);
  if (attributes && span.isRecording()) span.setAttributes(attributes());
  return span;
}

/** The context whose current span is `span`: what its children are started under. */
export function withSpan(parent: Context, span: Span): Context {
  return trace.setSpan(parent, span);
}

/** startSpan, with the context for its children. */
export function startTraced(name: string, parent: Context, kind: SpanKind = SpanKind.INTERNAL, attributes?: () => Attributes): Traced {
  const span = startSpan(name, parent, kind, attributes);
  return { span, context: withSpan(parent, span) };
}

/**
 * Marks a span failed (it stays open): the kvfabric code of a KvfError as kvfabric.error.code and error.type,
 * the exception as an event, status ERROR.
 */
export function spanFailed(span: Span, err: unknown): void {
  if (!span.isRecording()) return;
  const raw = (err as { code?: unknown } | null)?.code;
  const code = isErrorCode(raw) ? raw : undefined;
  if (code) span.setAttribute(ATTR.errorCode, code);
  span.setAttribute(ATTR_ERROR_TYPE, code ?? (err instanceof Error ? err.name : 'Error'));
  span.recordException(err instanceof Error ? err : String(err));
  const message = err instanceof Error ? err.message : String(err);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code ? `${code}: ${message}` : message });
}

/** Runs `fn` in `span`, ending it either way (failed, with the error, when `fn` throws). */
export async function inSpan<T>(span: Span, fn: () => Promise<T> | T): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    spanFailed(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/** The part of grpc-js's Metadata the propagation needs (kept structural: this module does not load gRPC). */
export interface MetadataLike {
  set(key: string, value: string): void;
  get(key: string): unknown[];
  getMap(): Record<string, unknown>;
}

const metadataSetter: TextMapSetter<MetadataLike> = { set: (md, key, value) => md.set(key, value) };
const metadataGetter: TextMapGetter<MetadataLike> = {
  get: (md, key) => {
    const v = md.get(key)[0];
    return typeof v === 'string' ? v : undefined;
  },
  keys: (md) => Object.keys(md.getMap()),
};

/** Writes `ctx`'s trace context (W3C traceparent, tracestate) into a call's metadata; nothing without a propagator. */
export function injectMetadata(ctx: Context, md: MetadataLike): void {
  propagation.inject(ctx, md, metadataSetter);
}

/** The caller's trace context from a call's metadata (ROOT_CONTEXT when it sent none). */
export function extractMetadata(md: MetadataLike): Context {
  return propagation.extract(ROOT_CONTEXT, md, metadataGetter);
}

/** The client's trace context from HTTP request headers (a `traceparent` it sent), else ROOT_CONTEXT. */
export function extractHeaders(headers: Record<string, string | string[] | undefined>): Context {
  return propagation.extract(ROOT_CONTEXT, headers);
}

export type ServiceRole = 'frontend' | 'prefill' | 'decode';

/** What a registered provider needs at shutdown; undefined while tracing is off. */
let provider: { shutdown(): Promise<void> } | undefined;
let shuttingDown: Promise<void> | undefined;

/** Whether the environment asks for traces: an OTLP endpoint, the SDK not disabled, the exporter otlp. */
export function tracingConfigured(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? 'otlp').split(',').map((s) => s.trim().toLowerCase());
  if (!exporters.includes('otlp')) return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT);
}

/**
 * Registers this process's tracer provider when the environment configures an OTLP endpoint (tracingConfigured);
 * otherwise does nothing and resolves false. service.name is `kvfabric-<role>` unless OTEL_SERVICE_NAME or
 * OTEL_RESOURCE_ATTRIBUTES say otherwise; `attributes` join the resource (a worker's id). The protocol is
 * OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL: http/protobuf (the default) or http/json;
 * grpc is not offered (it would load a second gRPC stack), so it falls back to http/protobuf with a warning.
 * The batch processor, sampler and exporter read their own OTEL_* variables (OTEL_BSP_SCHEDULE_DELAY,
 * OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS, …) from process.env; `env` is where this function itself looks.
 * Export failures are logged as warnings.
 */
export async function initTracing(role: ServiceRole, log?: Logger, attributes: Attributes = {}, env: NodeJS.ProcessEnv = process.env): Promise<boolean> {
  if (provider) return true;
  if (!tracingConfigured(env)) return false;
  const asked = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'http/protobuf').trim().toLowerCase();
  const protocol = asked === 'http/json' ? 'http/json' : 'http/protobuf';
  if (asked !== protocol) log?.warn({ protocol: asked }, `OTLP protocol '${asked}' is not supported for traces; sending http/protobuf`);
  const [
    { BasicTracerProvider, BatchSpanProcessor },
    { defaultResource, detectResources, envDetector, resourceFromAttributes },
    { W3CTraceContextPropagator },
    { OTLPTraceExporter },
  ] = await Promise.all([
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/core'),
    protocol === 'http/json' ? import('@opentelemetry/exporter-trace-otlp-http') : import('@opentelemetry/exporter-trace-otlp-proto'),
  ]);
  if (provider) return true; // another call won the race
  if (log) {
    const warn = (message: string, ...args: unknown[]): void => log.warn({ otel: args.map(String).join(' ') || undefined }, `opentelemetry: ${message}`);
    diag.setLogger({ error: warn, warn, info: () => {}, debug: () => {}, verbose: () => {} }, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
  }
  const resource = defaultResource()
    .merge(resourceFromAttributes({ [ATTR_SERVICE_NAME]: `kvfabric-${role}`, [ATTR.role]: role, ...attributes }))
    .merge(detectResources({ detectors: [envDetector] }));
  const sdk = new BasicTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter())] });
  trace.setGlobalTracerProvider(sdk);
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  provider = sdk;
  // A process that ends by running out of work (no signal, no exit call) flushes too; the BSP's timer is unref'd,
  // so tracing itself never keeps a process alive.
  process.once('beforeExit', () => void shutdownTracing());
  log?.info({ role, protocol, endpoint: env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT }, 'tracing: exporting spans over OTLP');
  return true;
}

/**
 * Flushes the spans not yet exported and shuts the provider down, waiting at most `deadlineMs` (a collector
 * that does not answer must not hold the process's exit). Safe to call when tracing is off, and more than once.
 */
export function shutdownTracing(deadlineMs = 3000): Promise<void> {
  if (!provider) return Promise.resolve();
  const p = provider;
  shuttingDown ??= (async () => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => (timer = setTimeout(resolve, deadlineMs).unref()));
    await Promise.race([p.shutdown().catch(() => undefined), late]);
    clearTimeout(timer);
  })();
  return shuttingDown;
}
