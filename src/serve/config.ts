// Serving configuration: defaults < JSON file (--config) < environment < flags, validated by one JSON schema
// per process kind (ajv). Unknown keys are refused — a misspelt key must not silently leave a default in
// place. Environment: every key as KVF_<KEY> (KVF_TOKENS_PER_BLOCK, lists comma-separated), plus the
// seed deployment's own variables: NIXL_BACKEND (the KV backend) and FI_PROVIDER (the libfabric provider).
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';

import { Ajv, type ErrorObject, type JSONSchemaType } from 'ajv';

import { KvfError } from '../fabric/errors.js';
import { MAX_BUSY_POLL_US, resolveBackend } from '../fabric/config.js';
import { METADATA_LIMITS } from '../fabric/metadata.js';
import { MAX_LEASE_MS } from '../kv/leases.js';
import { DEFAULT_TOKENS_PER_BLOCK } from '../kv/plan.js';
import { defaultModelPath } from './default-model.js';

export type Role = 'prefill' | 'decode';
export type ServeMode = 'pull' | 'push' | 'aggregated';

/** The control plane's credentials: the cluster token (every process) and TLS material, all from files or env. */
interface Security {
  /** Bearer secret every gRPC caller proves it holds (KVF_CLUSTER_TOKEN); or clusterTokenFile. */
  clusterToken?: string;
  clusterTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsClientAuth: boolean;
  tlsServerName?: string;
}

interface Common extends Security {
  model: string;
  /** Id served in the API (default: the file name without .gguf). */
  modelName?: string;
  backend: 'LIBFABRIC';
  etcd?: string[];
  etcdPrefix: string;
}

export interface WorkerConfig extends Common {
  role: Role;
  id: string;
  /** gRPC listen address, host:port (port 0: any free port). */
  listen: string;
  /** host:port others use to reach this worker (default: the listen address). */
  advertise?: string;
  provider?: string;
  rails?: number;
  /** Agent busy polling (µs, AgentOptions.busyPollUs): lower small-transfer latency for a core while traffic lasts. */
  busyPollUs?: number;
  /** tcp provider: the address the fabric endpoints bind. */
  fabricAddress?: string;
  blocks: number;
  tokensPerBlock: number;
  kvDtype: 'f16' | 'f32';
  threads?: number;
  hugepages: boolean;
  leaseMs: number;
  /** The longest lease this worker grants, whatever a caller asks for. */
  maxLeaseMs: number;
  /** A fabric peer unused this long is dropped from the agent's table. */
  peerIdleMs: number;
  /** Decode streams at most; more are refused with KVF_ERR_OVERLOADED. */
  maxStreams: number;
  /** A prompt that would wait longer than this for the engine (at its measured rate) is refused, when its caller set no earlier deadline. */
  maxQueueMs: number;
  /** Signs and checks KV handles (KVF_HANDLE_KEY); workers only, the frontend never holds it. Or handleKeyFile. */
  handleKey?: string;
  handleKeyFile?: string;
  transferTimeoutMs: number;
  /** Frontend registry (host:port) to register with. */
  register?: string;
  /** etcd lease TTL of this worker's registration, seconds. */
  etcdTtl: number;
}

export interface FrontendConfig extends Common {
  /** HTTP listen address, host:port. */
  listen: string;
  /** gRPC address of the worker registry (workers started with --register). */
  registryListen?: string;
  prefill: string[];
  decode: string[];
  mode: ServeMode;
  requestTimeoutMs: number;
  prefillTimeoutMs: number;
  leaseMs: number;
  healthIntervalMs: number;
  /** Body size limit, bytes. */
  bodyLimit: number;
  /** A request's headers and body must arrive within this (slow senders get 408 and lose the connection). */
  bodyTimeoutMs: number;
  /** Open HTTP connections at most; more are closed on arrival (file descriptors are finite). */
  maxConnections: number;
  /** Requests in flight at most; more get 429 at once. */
  maxInflight: number;
  /** Decode workers a request may move to when the one streaming it fails (0: the client gets the error). */
  maxMigrations: number;
  /** A worker that leaves a keepalive ping of an open call unanswered this long is taken for dead (frozen, or cut off). */
  keepaliveMs: number;
}

const common = {
  model: { type: 'string', minLength: 1 },
  modelName: { type: 'string', minLength: 1, nullable: true },
  backend: { type: 'string', enum: ['LIBFABRIC'] },
  etcd: { type: 'array', items: { type: 'string', pattern: '^https?://' }, nullable: true },
  etcdPrefix: { type: 'string', default: '/kvfabric/workers/' },
  clusterToken: { type: 'string', nullable: true },
  clusterTokenFile: { type: 'string', minLength: 1, nullable: true },
  tlsCert: { type: 'string', minLength: 1, nullable: true },
  tlsKey: { type: 'string', minLength: 1, nullable: true },
  tlsCa: { type: 'string', minLength: 1, nullable: true },
  tlsClientAuth: { type: 'boolean', default: false },
  tlsServerName: { type: 'string', minLength: 1, nullable: true },
} as const;

const hostPort = { type: 'string', pattern: '^[^\\s:]*(:\\d{1,5})$' } as const;

const workerSchema: JSONSchemaType<WorkerConfig> = {
  type: 'object',
  additionalProperties: false,
  required: [
    'model',
    'role',
    'id',
    'listen',
    'backend',
    'blocks',
    'tokensPerBlock',
    'kvDtype',
    'hugepages',
    'leaseMs',
    'maxLeaseMs',
    'peerIdleMs',
    'maxStreams',
    'maxQueueMs',
    'transferTimeoutMs',
    'etcdPrefix',
    'etcdTtl',
    'tlsClientAuth',
  ],
  properties: {
    ...common,
    role: { type: 'string', enum: ['prefill', 'decode'] },
    id: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$' },
    listen: { ...hostPort, default: '127.0.0.1:0' },
    advertise: { ...hostPort, nullable: true },
    provider: { type: 'string', minLength: 1, nullable: true },
    rails: { type: 'integer', minimum: 1, maximum: METADATA_LIMITS.maxRails, nullable: true },
    busyPollUs: { type: 'integer', minimum: 0, maximum: MAX_BUSY_POLL_US, nullable: true },
    fabricAddress: { type: 'string', minLength: 1, nullable: true },
    blocks: { type: 'integer', minimum: 1, maximum: 1 << 20, default: 256 },
    tokensPerBlock: { type: 'integer', minimum: 1, maximum: 4096, default: DEFAULT_TOKENS_PER_BLOCK },
    kvDtype: { type: 'string', enum: ['f16', 'f32'], default: 'f16' },
    threads: { type: 'integer', minimum: 1, maximum: 1024, nullable: true },
    hugepages: { type: 'boolean', default: false },
    leaseMs: { type: 'integer', minimum: 1, maximum: MAX_LEASE_MS, default: 30_000 },
    maxLeaseMs: { type: 'integer', minimum: 1, maximum: MAX_LEASE_MS, default: 120_000 },
    peerIdleMs: { type: 'integer', minimum: 100, maximum: MAX_LEASE_MS, default: 300_000 },
    maxStreams: { type: 'integer', minimum: 1, default: 64 },
    maxQueueMs: { type: 'integer', minimum: 1, default: 30_000 },
    handleKey: { type: 'string', nullable: true },
    handleKeyFile: { type: 'string', minLength: 1, nullable: true },
    transferTimeoutMs: { type: 'integer', minimum: 1, default: 10_000 },
    register: { ...hostPort, nullable: true },
    etcdTtl: { type: 'integer', minimum: 1, maximum: 3600, default: 5 },
  },
};

const frontendSchema: JSONSchemaType<FrontendConfig> = {
  type: 'object',
  additionalProperties: false,
  required: [
    'model',
    'listen',
    'backend',
    'prefill',
    'decode',
    'mode',
    'requestTimeoutMs',
    'prefillTimeoutMs',
    'leaseMs',
    'healthIntervalMs',
    'bodyLimit',
    'bodyTimeoutMs',
    'maxConnections',
    'maxInflight',
    'maxMigrations',
    'keepaliveMs',
    'etcdPrefix',
    'tlsClientAuth',
  ],
  properties: {
    ...common,
    listen: { ...hostPort, default: '127.0.0.1:8000' },
    registryListen: { ...hostPort, nullable: true },
    prefill: { type: 'array', items: hostPort, default: [] },
    decode: { type: 'array', items: hostPort, default: [] },
    mode: { type: 'string', enum: ['pull', 'push', 'aggregated'], default: 'pull' },
    requestTimeoutMs: { type: 'integer', minimum: 1, default: 120_000 },
    prefillTimeoutMs: { type: 'integer', minimum: 1, default: 30_000 },
    leaseMs: { type: 'integer', minimum: 1, maximum: MAX_LEASE_MS, default: 30_000 },
    healthIntervalMs: { type: 'integer', minimum: 10, default: 1000 },
    bodyLimit: { type: 'integer', minimum: 1024, default: 4 << 20 },
    bodyTimeoutMs: { type: 'integer', minimum: 1, default: 30_000 },
    maxConnections: { type: 'integer', minimum: 1, default: 4096 },
    maxInflight: { type: 'integer', minimum: 1, default: 32 },
    maxMigrations: { type: 'integer', minimum: 0, default: 2 },
    keepaliveMs: { type: 'integer', minimum: 100, default: 10_000 },
  },
};

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: true });
const validators = { worker: ajv.compile(workerSchema), frontend: ajv.compile(frontendSchema) };
const ARRAY_KEYS = new Set(['etcd', 'prefill', 'decode']);

export interface ConfigSources {
  /** Parsed flags (undefined values are ignored). */
  flags?: Record<string, unknown>;
  env?: NodeJS.ProcessEnv;
  /** Path of a JSON config file. */
  file?: string;
}

export function workerConfig(sources: ConfigSources): WorkerConfig {
  const merged = merge(Object.keys(workerSchema.properties), sources);
  merged.id ??= `${String(merged.role ?? 'worker')}-${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64);
  return validate('worker', merged) as WorkerConfig;
}

export function frontendConfig(sources: ConfigSources): FrontendConfig {
  return validate('frontend', merge(Object.keys(frontendSchema.properties), sources)) as FrontendConfig;
}

/** The environment variable of a config key: tokensPerBlock → KVF_TOKENS_PER_BLOCK. */
export function envName(key: string): string {
  return `KVF_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** Every variable the serving config reads (workers and frontend): what `kvfabric doctor` knows as kvfabric's own. */
export function configEnvNames(): string[] {
  const keys = new Set([...Object.keys(workerSchema.properties), ...Object.keys(frontendSchema.properties)]);
  return [...keys].map(envName);
}

function merge(keys: string[], { flags = {}, env = process.env, file }: ConfigSources): Record<string, unknown> {
  const fromFile = file ? readJson(file) : {};
  const fromEnv: Record<string, unknown> = {};
  for (const key of keys) {
    const value = env[envName(key)];
    if (value !== undefined && value !== '') fromEnv[key] = ARRAY_KEYS.has(key) ? splitList(value) : value;
  }
  if (env.FI_PROVIDER && keys.includes('provider')) fromEnv.provider = env.FI_PROVIDER;
  // NIXL_BACKEND is checked here with the fabric's own rule, so a wrong backend fails at start-up with the same code.
  fromEnv.backend = resolveBackend(undefined, env);
  const fromFlags = Object.fromEntries(
    Object.entries(flags)
      .map(([k, v]) => [k, ARRAY_KEYS.has(k) && typeof v === 'string' ? splitList(v) : v])
      .filter(([, v]) => v !== undefined),
  );
  const merged: Record<string, unknown> = { ...fromFile, ...fromEnv, ...fromFlags };
  merged.model ??= defaultModelPath(env);
  return merged;
}

function validate(kind: keyof typeof validators, config: Record<string, unknown>): unknown {
  const check = validators[kind];
  if (!check(config)) throw new KvfError('KVF_ERR_BAD_CONFIG', `invalid ${kind} configuration: ${describe(check.errors ?? [])}`);
  return config;
}

function describe(errors: ErrorObject[]): string {
  return errors
    .map((e) => {
      if (e.keyword === 'additionalProperties') return `unknown key '${String(e.params.additionalProperty)}'`;
      const key = e.instancePath.replace(/^\//, '').replace(/\//g, '.') || '(root)';
      return `${key} ${e.message ?? 'is invalid'}${e.keyword === 'enum' ? ` (${(e.params.allowedValues as unknown[]).join(', ')})` : ''}`;
    })
    .join('; ');
}

function readJson(path: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new KvfError('KVF_ERR_BAD_CONFIG', `cannot read config file ${path}: ${(err as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new KvfError('KVF_ERR_BAD_CONFIG', `${path} must hold a JSON object`);
  return parsed as Record<string, unknown>;
}

function splitList(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}
