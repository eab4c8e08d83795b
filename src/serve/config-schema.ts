// The serving configuration's keys: one JSON schema per process kind (worker, frontend) with each key's type,
// limits, default and description, and the command-line flags derived from them (configFlags). Free of ajv,
// so that the CLI can declare its flags without loading the validator (config.ts compiles these schemas).
import type { JSONSchemaType } from 'ajv';

import { DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_STEP_TOKENS } from '../engine/batcher.js';
import { MAX_BUSY_POLL_US } from '../fabric/config.js';
import { METADATA_LIMITS } from '../fabric/metadata.js';
import { MAX_LEASE_MS } from '../kv/leases.js';
import { DEFAULT_TOKENS_PER_BLOCK } from '../kv/plan.js';

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
  /** Sequences in one batched engine step at most (continuous batching). */
  maxBatchSequences: number;
  /** Tokens in one engine step at most: decodes one each, prompt chunks fill the rest (chunked prefill). */
  maxStepTokens: number;
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
  /** Prefix cache: share full KV blocks across requests by their chained token hash (on), or never (off). */
  prefixCache: 'on' | 'off';
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
  /** How workers are picked: by cached prefix overlap and load (kv), or fewest in flight then round-robin. */
  router: RouterPolicy;
  /** kv router: the cost of one prompt block a worker would have to compute or receive. */
  routerOverlapWeight: number;
  /** kv router: the cost of one prompt block of this frontend's requests in flight on the worker (its load). */
  routerLoadWeight: number;
  /** A prompt whose part the decode worker lacks is at most this many tokens: the decode worker prefills it (0: never). */
  localPrefillTokens: number;
  /** Requests in flight per prefill worker at which every one counts as saturated: the decode worker prefills (0: never). */
  prefillSaturation: number;
  /** A prompt with at most this many tokens to compute is prefilled by the decode worker (0: never). */
  shortPromptTokens: number;
}

export type RouterPolicy = 'kv' | 'round-robin';

const common = {
  model: { type: 'string', minLength: 1, description: 'GGUF model (default: SmolLM2 when fetched, else the tiny test model)' },
  modelName: { type: 'string', minLength: 1, nullable: true, description: 'model id served in the API (default: the file name)' },
  backend: { type: 'string', enum: ['LIBFABRIC'], description: 'the KV backend (NIXL_BACKEND)' },
  etcd: { type: 'array', items: { type: 'string', pattern: '^https?://' }, nullable: true, description: 'etcd endpoints, comma-separated (discovery)' },
  etcdPrefix: { type: 'string', default: '/kvfabric/workers/', description: 'etcd key prefix of worker entries' },
  clusterToken: { type: 'string', nullable: true, description: 'the cluster token every gRPC call proves (KVF_CLUSTER_TOKEN)' },
  clusterTokenFile: {
    type: 'string',
    minLength: 1,
    nullable: true,
    description: 'file holding the cluster token every gRPC call proves (or KVF_CLUSTER_TOKEN)',
  },
  tlsCert: { type: 'string', minLength: 1, nullable: true, description: 'TLS certificate chain (PEM) of this process: turns TLS on for the control plane' },
  tlsKey: { type: 'string', minLength: 1, nullable: true, description: 'TLS private key (PEM)' },
  tlsCa: { type: 'string', minLength: 1, nullable: true, description: "CA (PEM) that signs the peers' certificates" },
  tlsClientAuth: {
    type: 'boolean',
    default: false,
    description: 'mutual TLS: servers require client certificates signed by --tls-ca, clients present theirs',
  },
  tlsServerName: { type: 'string', minLength: 1, nullable: true, description: "the name clients expect in workers' certificates (default: the host dialled)" },
} as const;

const hostPort = { type: 'string', pattern: '^[^\\s:]*(:\\d{1,5})$' } as const;

export const workerSchema: JSONSchemaType<WorkerConfig> = {
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
    'maxBatchSequences',
    'maxStepTokens',
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
    'prefixCache',
  ],
  properties: {
    ...common,
    role: { type: 'string', enum: ['prefill', 'decode'], description: 'the command: prefill or decode' },
    id: { type: 'string', pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'worker id (default: <role>-<host>-<pid>)' },
    listen: { ...hostPort, default: '127.0.0.1:0', description: 'gRPC listen address (port 0: any free port)' },
    advertise: { ...hostPort, nullable: true, description: 'address others use to reach this worker (default: the listen address)' },
    provider: { type: 'string', minLength: 1, nullable: true, description: 'tcp | shm | efa (default: FI_PROVIDER, else efa, else tcp)' },
    rails: { type: 'integer', minimum: 1, maximum: METADATA_LIMITS.maxRails, nullable: true, description: 'fabric rails' },
    busyPollUs: {
      type: 'integer',
      minimum: 0,
      maximum: MAX_BUSY_POLL_US,
      nullable: true,
      description: 'rail threads keep polling this long after activity (lower small-transfer latency, costs a core; default 0)',
    },
    fabricAddress: { type: 'string', minLength: 1, nullable: true, description: 'tcp provider: address the fabric endpoints bind' },
    blocks: { type: 'integer', minimum: 1, maximum: 1 << 20, default: 256, description: 'KV blocks in the pool' },
    tokensPerBlock: { type: 'integer', minimum: 1, maximum: 4096, default: DEFAULT_TOKENS_PER_BLOCK, description: 'positions per KV block' },
    kvDtype: { type: 'string', enum: ['f16', 'f32'], default: 'f16', description: 'KV cache element type' },
    threads: { type: 'integer', minimum: 1, maximum: 1024, nullable: true, description: 'engine threads' },
    maxBatchSequences: {
      type: 'integer',
      minimum: 1,
      maximum: 1024,
      default: DEFAULT_MAX_BATCH_SEQUENCES,
      description: 'sequences in one batched engine step at most (continuous batching)',
    },
    maxStepTokens: {
      type: 'integer',
      minimum: 1,
      maximum: 65536,
      default: DEFAULT_MAX_STEP_TOKENS,
      description: 'tokens in one engine step at most: decodes one each, prompt chunks fill the rest (chunked prefill)',
    },
    hugepages: { type: 'boolean', default: false, description: 'put the KV pool on 2 MiB hugepages' },
    leaseMs: { type: 'integer', minimum: 1, maximum: MAX_LEASE_MS, default: 30_000, description: 'free blocks not pulled within this' },
    maxLeaseMs: {
      type: 'integer',
      minimum: 1,
      maximum: MAX_LEASE_MS,
      default: 120_000,
      description: 'the longest lease granted, whatever a caller asks for',
    },
    peerIdleMs: { type: 'integer', minimum: 100, maximum: MAX_LEASE_MS, default: 300_000, description: 'drop a fabric peer unused this long' },
    maxStreams: { type: 'integer', minimum: 1, default: 64, description: 'decode streams at most; more get KVF_ERR_OVERLOADED' },
    maxQueueMs: {
      type: 'integer',
      minimum: 1,
      default: 30_000,
      description: 'refuse a prompt that would wait longer than this for the engine at its measured rate',
    },
    handleKey: { type: 'string', nullable: true, description: 'the key that signs KV handles (KVF_HANDLE_KEY)' },
    handleKeyFile: {
      type: 'string',
      minLength: 1,
      nullable: true,
      description: 'file holding the key that signs KV handles, the same on every worker (or KVF_HANDLE_KEY)',
    },
    transferTimeoutMs: { type: 'integer', minimum: 1, default: 10_000, description: 'fail a KV transfer after this' },
    register: { ...hostPort, nullable: true, description: 'register with this frontend registry' },
    etcdTtl: { type: 'integer', minimum: 1, maximum: 3600, default: 5, description: 'etcd lease TTL, seconds' },
    prefixCache: {
      type: 'string',
      enum: ['on', 'off'],
      default: 'on',
      description: 'share full KV blocks across requests whose prompts start alike (prefix cache), evicting idle ones LRU',
    },
  },
};

export const frontendSchema: JSONSchemaType<FrontendConfig> = {
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
    'router',
    'routerOverlapWeight',
    'routerLoadWeight',
    'localPrefillTokens',
    'prefillSaturation',
    'shortPromptTokens',
  ],
  properties: {
    ...common,
    listen: { ...hostPort, default: '127.0.0.1:8000', description: 'HTTP listen address' },
    registryListen: { ...hostPort, nullable: true, description: 'serve the worker registry (workers use --register)' },
    prefill: { type: 'array', items: hostPort, default: [], description: 'static prefill worker addresses, comma-separated' },
    decode: { type: 'array', items: hostPort, default: [], description: 'static decode worker addresses, comma-separated' },
    mode: { type: 'string', enum: ['pull', 'push', 'aggregated'], default: 'pull', description: 'KV hand-off' },
    requestTimeoutMs: { type: 'integer', minimum: 1, default: 120_000, description: 'fail a request after this' },
    prefillTimeoutMs: { type: 'integer', minimum: 1, default: 30_000, description: 'fall back to local prefill after this' },
    leaseMs: {
      type: 'integer',
      minimum: 1,
      maximum: MAX_LEASE_MS,
      default: 30_000,
      description: 'how long prefilled blocks wait for their decode worker',
    },
    healthIntervalMs: { type: 'integer', minimum: 10, default: 1000, description: 'worker health check period' },
    bodyLimit: { type: 'integer', minimum: 1024, default: 4 << 20, description: 'request body size limit, bytes' },
    bodyTimeoutMs: { type: 'integer', minimum: 1, default: 30_000, description: "a request's headers and body must arrive within this (else 408)" },
    maxConnections: { type: 'integer', minimum: 1, default: 4096, description: 'open HTTP connections at most' },
    maxInflight: { type: 'integer', minimum: 1, default: 32, description: 'requests in flight at most; more get 429 at once' },
    maxMigrations: {
      type: 'integer',
      minimum: 0,
      default: 2,
      description: 'decode workers a request may move to when the one streaming it fails',
    },
    keepaliveMs: {
      type: 'integer',
      minimum: 100,
      default: 10_000,
      description: 'a worker that leaves a ping of an open call unanswered this long is taken for dead',
    },
    router: {
      type: 'string',
      enum: ['kv', 'round-robin'],
      default: 'kv',
      description: 'pick workers by cached prefix overlap and load (kv), or by fewest in flight, round-robin among equals',
    },
    routerOverlapWeight: { type: 'number', minimum: 0, default: 1, description: 'kv router: cost of each prompt block a worker lacks' },
    routerLoadWeight: { type: 'number', minimum: 0, default: 1, description: 'kv router: cost of each prompt block of the requests in flight on a worker' },
    localPrefillTokens: {
      type: 'integer',
      minimum: 0,
      default: 64,
      description: 'kv router: the decode worker prefills a prompt it holds all but this many tokens of itself (0: never)',
    },
    prefillSaturation: {
      type: 'integer',
      minimum: 0,
      default: 0,
      description: 'requests in flight on every prefill worker at which the decode worker prefills instead (0: never)',
    },
    shortPromptTokens: {
      type: 'integer',
      minimum: 0,
      default: 0,
      description: 'the decode worker prefills a prompt with at most this many tokens to compute, cached prefix aside (0: never)',
    },
  },
};

/**
 * Keys with no flag: the role is the command itself, the backend comes from NIXL_BACKEND, and
 * secrets never go on a command line, where any user of the host reads them (ps): env or a file only.
 */
export const NO_FLAG: ReadonlySet<string> = new Set(['role', 'backend', 'clusterToken', 'handleKey']);

/** One-letter aliases of the flags used most. */
const SHORT_FLAGS: Readonly<Record<string, string>> = { model: 'm', provider: 'p', rails: 'r' };

/** A config key's command-line flag, from its schema: what src/cli/main.ts declares for each process kind. */
export interface ConfigFlag {
  key: string;
  /** Commander's flags string: '--tokens-per-block <n>', '-m, --model <model>', '--hugepages'. */
  flags: string;
  description: string;
  /** The schema's default, for the help text only: a flag default would override the file and env. */
  default?: unknown;
  /** Allowed values (enums). */
  choices?: readonly string[];
}

interface PropertySchema {
  type?: string;
  enum?: readonly string[];
  pattern?: string;
  items?: { pattern?: string };
  default?: unknown;
  description?: string;
}

/** The flags of a process kind's config keys, in schema order (every key but NO_FLAG). */
export function configFlags(kind: 'worker' | 'frontend'): ConfigFlag[] {
  const properties = (kind === 'worker' ? workerSchema : frontendSchema).properties as Record<string, PropertySchema>;
  return Object.entries(properties)
    .filter(([key]) => !NO_FLAG.has(key))
    .map(([key, p]) => {
      const value = p.type === 'boolean' ? '' : ` <${argName(key, p)}>`;
      const short = SHORT_FLAGS[key];
      return {
        key,
        flags: `${short ? `-${short}, ` : ''}--${flagName(key)}${value}`,
        description: p.description ?? '',
        ...(p.default !== undefined ? { default: p.default } : {}),
        ...(p.enum ? { choices: p.enum } : {}),
      };
    });
}

/** The flag of a config key: tokensPerBlock → tokens-per-block (commander maps it back to tokensPerBlock). */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** What the help shows a flag's value as: <n>, <ms>, <us>, <host:port>, <addrs>, <urls>, else the key's last word. */
function argName(key: string, p: PropertySchema): string {
  if (p.type === 'integer') return /Ms$/.test(key) ? 'ms' : /Us$/.test(key) ? 'us' : 'n';
  if (p.type === 'array') return p.items?.pattern === hostPort.pattern ? 'addrs' : 'urls';
  if (p.pattern === hostPort.pattern) return 'host:port';
  return (/[A-Z]?[a-z]+$/.exec(key)?.[0] ?? key).toLowerCase();
}
