// One registry of every error code kvfabric raises, from TypeScript and from the native addon.
// docs/errors.md and test/errors-registry.test.ts keep this table, the docs and the C++ sources in sync.

export const ERROR_CODES = {
  KVF_ERR_INVALID_ARGUMENT: 'An argument has the wrong type or an impossible value.',
  KVF_ERR_OUT_OF_RANGE: 'An offset or length falls outside its registered memory region (local or remote).',
  KVF_ERR_ZERO_LENGTH: 'A descriptor or registration has length 0.',
  KVF_ERR_OVERLAP: 'Two descriptors of one transfer write the same bytes at the destination.',
  KVF_ERR_UNKNOWN_REGION: 'A region id is not registered locally or not advertised by the peer.',
  KVF_ERR_UNKNOWN_PEER: 'The peer was never loaded, or its metadata was invalidated.',
  KVF_ERR_CLOSED: 'The agent, region or peer has been closed; the operation was not started or was abandoned.',
  KVF_ERR_BUSY: 'The resource still has operations in flight (for example deregistering memory under a transfer).',
  KVF_ERR_DETACHED: 'The ArrayBuffer behind a registration has been detached or transferred.',
  KVF_ERR_BAD_METADATA: "Peer metadata or grant bytes are truncated, corrupt, of an unsupported version, inconsistent, or not that peer's.",
  KVF_ERR_PROVIDER_MISMATCH: 'The peer uses another libfabric provider or address format than this agent.',
  KVF_ERR_TOO_LARGE: 'A notification or allocation exceeds its limit, or the region table is full (live regions and grants).',
  KVF_ERR_TIMEOUT: 'The operation did not finish within its timeout.',
  KVF_ERR_PEER_UNREACHABLE:
    "The peer's fabric address cannot be reached from this agent (a loopback address of a peer on another host or in another container).",
  KVF_ERR_BACKEND_UNSUPPORTED: 'NIXL_BACKEND (or the backend option) names a backend kvfabric does not implement.',
  KVF_ERR_PROVIDER_UNAVAILABLE: 'No libfabric provider matches the requested provider, endpoint type and capabilities.',
  KVF_ERR_PROVIDER: 'libfabric returned an error; errno and providerMessage (fi_strerror) carry its details.',
  KVF_ERR_ALLOC: 'Memory could not be allocated (hugepages missing, memlock limit, out of memory).',
  KVF_ERR_REMOTE_ACCESS: 'The peer does not grant this access: the region is not advertised (deregistered, revoked, never advertised) or the key is wrong.',
  KVF_ERR_FAST_PATH: 'The same-host fast path (cross-memory attach) failed: the peer process is gone or the kernel refused access.',
  KVF_ERR_BAD_MODEL: 'A model file (GGUF) is truncated, corrupt, of an unsupported version, or inconsistent.',
  KVF_ERR_UNSUPPORTED_TENSOR_TYPE: 'A model tensor uses a type the reference engine cannot compute with.',
  KVF_ERR_POOL_EXHAUSTED: 'The KV block pool has no free block left for the sequence.',
  KVF_ERR_CONTEXT_OVERFLOW: "The prompt plus generated tokens exceed the model's context length.",
  KVF_ERR_BAD_CONFIG: 'A serving configuration (flags, env, file) fails its schema: unknown key, wrong type, impossible value.',
  KVF_ERR_BAD_REQUEST: 'An HTTP request body is malformed or fails the API schema.',
  KVF_ERR_UNKNOWN_MODEL: 'The request names a model this deployment does not serve.',
  KVF_ERR_NO_WORKER: 'No healthy worker of the needed role is known to the router.',
  KVF_ERR_WORKER_FAILED: 'A worker failed, died or timed out while serving the request.',
  KVF_ERR_LAYOUT_MISMATCH: 'Prefill and decode workers hold K/V in different layouts (model, block size or dtype).',
  KVF_ERR_UNAUTHENTICATED: 'A control-plane call did not prove the cluster token (missing, wrong, stale or replayed proof).',
  KVF_ERR_WRONG_ROLE: 'A worker was asked for an RPC its role does not serve (e.g. Prefill on a decode worker).',
  KVF_ERR_CANCELLED: 'The work was cancelled because its request ended (client gone, timed out, or cancelled).',
  KVF_ERR_OVERLOADED: 'The frontend or a worker already has as much work as it admits; retry after the Retry-After delay.',
  KVF_ERR_BAD_HANDLE: 'A KV handle or prefill result was forged, altered, expired, used before, or names blocks the worker does not hold for that request.',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface KvfErrorDetails {
  /** libfabric errno (positive), when the error came from libfabric. */
  errno?: number;
  /** fi_strerror text or the provider's error string. */
  providerMessage?: string;
  peer?: string;
  region?: number;
  provider?: string;
  cause?: unknown;
  /**
   * A transfer that timed out (KVF_ERR_TIMEOUT) is abandoned, not undone: its operations may still read or write
   * the local memory it named. This resolves once they have all finished or failed in the provider (or the agent
   * closed); only then may that memory be reused.
   */
  settled?: Promise<void>;
}

export class KvfError extends Error {
  readonly code: ErrorCode;
  readonly errno?: number;
  readonly providerMessage?: string;
  readonly peer?: string;
  readonly region?: number;
  readonly provider?: string;
  readonly settled?: Promise<void>;

  constructor(code: ErrorCode, message: string, details: KvfErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'KvfError';
    this.code = code;
    if (details.errno !== undefined) this.errno = details.errno;
    if (details.providerMessage !== undefined) this.providerMessage = details.providerMessage;
    if (details.peer !== undefined) this.peer = details.peer;
    if (details.region !== undefined) this.region = details.region;
    if (details.provider !== undefined) this.provider = details.provider;
    if (details.settled !== undefined) this.settled = details.settled;
  }
}

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_CODES, code);
}

/**
 * The addon throws plain Errors carrying `code` (and `errno`, `providerMessage` for libfabric failures);
 * this turns them, and completion errors delivered as objects, into KvfError.
 */
export function fromNative(err: unknown, extra: KvfErrorDetails = {}): KvfError {
  if (err instanceof KvfError) return err;
  const e = err as { code?: unknown; message?: unknown; errno?: unknown; providerMessage?: unknown; region?: unknown };
  const code = isErrorCode(e?.code) ? e.code : 'KVF_ERR_PROVIDER';
  const message = typeof e?.message === 'string' ? e.message : String(err);
  const details: KvfErrorDetails = { ...extra };
  if (typeof e?.errno === 'number') details.errno = e.errno;
  if (typeof e?.providerMessage === 'string') details.providerMessage = e.providerMessage;
  if (typeof e?.region === 'number') details.region = e.region;
  return new KvfError(code, message, details);
}
