// The control plane's gRPC surface: proto/kvfabric/v1/worker.proto loaded at run time (no generated code to
// keep in sync), the TS shapes of its messages as proto-loader produces them (camelCase fields, int64 as
// number, defaults filled in), and typed client constructors.
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import { injectMetadata, ROOT_CONTEXT, type Context } from '../common/tracing.js';
import type { KvLayoutMsg } from '../kv/layout.js';
import type { ClusterAuth } from './security/auth.js';

const PROTO = fileURLToPath(new URL('../../proto/kvfabric/v1/worker.proto', import.meta.url));

const definition = protoLoader.loadSync(PROTO, { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
const pkg = (grpc.loadPackageDefinition(definition) as unknown as { kvfabric: { v1: Record<string, grpc.ServiceClientConstructor> } }).kvfabric.v1;

export const WorkerService = pkg.Worker!.service;
export const RegistryService = pkg.Registry!.service;

export interface Sampling {
  temperature: number;
  topK: number;
  topP: number;
  seed: number;
}

export interface KvHandle {
  requestId: string;
  workerId: string;
  agentName: string;
  agentMetadata: Buffer;
  regionId: number;
  blocks: number[];
  layout: KvLayoutMsg | null;
  tokens: number;
  leaseExpiresUnixMs: number;
  access: string;
  mac: Uint8Array | null;
  grants: Uint8Array[];
}

export interface TransferReportMsg {
  op: string;
  backend: string;
  provider: string;
  rails: number[];
  bytes: number;
  durationMs: number;
  descriptors: number;
  initiator: string;
  path: string;
}

export interface PrefillRequest {
  requestId: string;
  tokens: number[];
  sampling: Sampling | null;
  leaseMs: number;
  pushTo: KvHandle | null;
}

export interface PrefillResponse {
  firstToken: number;
  samplerState: number;
  kv: KvHandle | null;
  push: TransferReportMsg | null;
  workerId: string;
  prefillMs: number;
  mac: Uint8Array | null;
  /** Prefix cache: leading prompt blocks the prefill worker had cached, and their bytes. */
  reusedBlocks: number;
  reusedBytes: number;
}

export interface DecodeRequest {
  requestId: string;
  prompt: number[];
  sampling: Sampling | null;
  maxTokens: number;
  endTokens: number[];
  prefill: PrefillResponse | null;
  reserved: KvHandle | null;
  fallbackReason: string;
  /** Migration: tokens the client already has, and the sampler's state after them. */
  generated: number[];
  samplerState: number;
}

export interface DecodeStarted {
  workerId: string;
  transfer: TransferReportMsg | null;
  localPrefill: boolean;
  fallbackReason: string;
  /** Prefix cache: leading prompt blocks the decode worker held already, and their bytes. */
  reusedBlocks: number;
  reusedBytes: number;
}

export interface KvEvent {
  snapshot: boolean;
  stored: string[];
  evicted: string[];
  salt: string;
  tokensPerBlock: number;
}

export interface DecodeDone {
  finishReason: 'stop' | 'length';
  completionTokens: number;
}

export type DecodeEvent =
  { event: 'started'; started: DecodeStarted } | { event: 'token'; token: number; samplerState: number } | { event: 'done'; done: DecodeDone };

export interface ReserveRequest {
  requestId: string;
  tokens: number;
  maxTokens: number;
  leaseMs: number;
  /** Optional: leading blocks of it cached on the decode worker are not reserved (the handle's tokens say how many positions). */
  prompt: number[];
}

export interface WorkerStatus {
  workerId: string;
  role: 'prefill' | 'decode' | string;
  address: string;
  model: string;
  backend: string;
  provider: string;
  rails: number;
  totalBlocks: number;
  freeBlocks: number;
  inflight: number;
  heldRequests: number;
  /** Fabric peers loaded now (dropped after --peer-idle-ms unused). */
  peers: number;
  /** Admission (src/serve/work-queue.ts): prompt tokens queued, decode streams, measured prefill rate. */
  queuedTokens: number;
  streams: number;
  prefillTokensPerS: number;
  /** Continuous batching (engine stats): steps run, the sequences and tokens they carried in all, the last step's. */
  engineSteps: number;
  stepSequences: number;
  stepTokens: number;
  batchSequences: number;
  stepTokensLast: number;
  maxBatchSequences: number;
  maxStepTokens: number;
  waitingPasses: number;
  /** Engine time: compute and thread hand-off of all steps, and the decode-only steps with their compute. */
  stepSeconds: number;
  handOffSeconds: number;
  decodeSteps: number;
  decodeStepSeconds: number;
  cachedBlocks: number;
  idleCachedBlocks: number;
  cacheLookups: number;
  cacheHits: number;
  cacheEvictions: number;
  ttlMs: number;
}

type Unary<Req, Res> = (
  req: Req,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Res) => void,
) => grpc.ClientUnaryCall;

export interface WorkerClient extends grpc.Client {
  prefill: Unary<Partial<PrefillRequest>, PrefillResponse>;
  decode(req: Partial<DecodeRequest>, options?: grpc.CallOptions): grpc.ClientReadableStream<DecodeEvent>;
  decode(req: Partial<DecodeRequest>, metadata: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<DecodeEvent>;
  reserve: Unary<Partial<ReserveRequest>, KvHandle>;
  release: Unary<{ requestId: string }, { released: boolean }>;
  health: Unary<Record<string, never>, WorkerStatus>;
  kvEvents(req: Record<string, never>, metadata?: grpc.Metadata, options?: grpc.CallOptions): grpc.ClientReadableStream<KvEvent>;
}

export interface RegistryClient extends grpc.Client {
  register: Unary<Partial<WorkerStatus>, { ok: boolean }>;
  deregister: Unary<{ workerId: string }, { ok: boolean }>;
}

/**
 * A Worker client whose every call carries the cluster token's proof (and runs over TLS when configured).
 * `keepaliveMs`: while calls are open, ping the worker this often and fail them (UNAVAILABLE) when a ping goes
 * unanswered as long: a frozen worker or a cut link then ends a stream, instead of the request timeout.
 */
export function workerClient(address: string, auth: ClusterAuth, keepaliveMs?: number): WorkerClient {
  const { credentials, options } = auth.clientOptions();
  if (keepaliveMs) Object.assign(options, { 'grpc.keepalive_time_ms': keepaliveMs, 'grpc.keepalive_timeout_ms': keepaliveMs });
  return new pkg.Worker!(address, credentials, options) as unknown as WorkerClient;
}

export function registryClient(address: string, auth: ClusterAuth): RegistryClient {
  const { credentials, options } = auth.clientOptions();
  return new pkg.Registry!(address, credentials, options) as unknown as RegistryClient;
}

/** A call's metadata carrying the trace context of `trace` (its span becomes the parent of the worker's). */
export function traceMetadata(trace: Context = ROOT_CONTEXT): grpc.Metadata {
  const md = new grpc.Metadata();
  injectMetadata(trace, md);
  return md;
}

/**
 * Calls a unary method as a promise, with a deadline; `signal` cancels the call (it then rejects with gRPC's
 * CANCELLED, or with the signal's reason when it was aborted before the call began). `trace`: the context whose
 * span the call belongs to (sent as W3C traceparent metadata).
 */
export function unary<Req, Res>(
  client: grpc.Client,
  method: Unary<Req, Res>,
  req: Req,
  timeoutMs: number,
  signal?: AbortSignal,
  trace?: Context,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = (): void => call.cancel();
    const call = method.call(client, req, traceMetadata(trace), { deadline: Date.now() + timeoutMs }, (err, res) => {
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve(res!);
    });
    signal?.addEventListener('abort', onAbort);
  });
}

/** Binds a gRPC server to host:port (port 0 picks one), with TLS when configured, and returns the address it listens on. */
export function bindServer(server: grpc.Server, listen: string, auth: ClusterAuth): Promise<string> {
  const host = listen.slice(0, listen.lastIndexOf(':'));
  return new Promise((resolve, reject) => {
    server.bindAsync(listen, auth.serverCredentials(), (err, port) => (err ? reject(err) : resolve(`${host}:${port}`)));
  });
}

export { grpc };
