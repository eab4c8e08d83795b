// One registry of every error code kvfabric raises, from TypeScript and from the native addon: its meaning,
// the HTTP status the frontend answers with (src/serve/frontend/errors.ts) and the gRPC status a worker fails a
// call with (src/serve/grpc-errors.ts). Codes no client or peer is expected to see carry the fallbacks, HTTP 500
// and INTERNAL, written out so that every status is decided here. docs/errors.md, native/core/error_codes.h and
// test/errors-registry.test.ts keep this table, the docs and the C++ sources in sync.

/** gRPC status names (grpc-js' `status` keys), so that this module needs no gRPC dependency. */
export type GrpcStatusName =
  | 'OK'
  | 'CANCELLED'
  | 'UNKNOWN'
  | 'INVALID_ARGUMENT'
  | 'DEADLINE_EXCEEDED'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'PERMISSION_DENIED'
  | 'RESOURCE_EXHAUSTED'
  | 'FAILED_PRECONDITION'
  | 'ABORTED'
  | 'OUT_OF_RANGE'
  | 'UNIMPLEMENTED'
  | 'INTERNAL'
  | 'UNAVAILABLE'
  | 'DATA_LOSS'
  | 'UNAUTHENTICATED';

export interface ErrorEntry {
  /** What the code means; docs/errors.md repeats it verbatim. */
  readonly message: string;
  readonly http: number;
  readonly grpc: GrpcStatusName;
}

export const ERROR_REGISTRY = {
  KVF_ERR_INVALID_ARGUMENT: { message: 'An argument has the wrong type or an impossible value.', http: 400, grpc: 'INVALID_ARGUMENT' },
  KVF_ERR_OUT_OF_RANGE: { message: 'An offset or length falls outside its registered memory region (local or remote).', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_ZERO_LENGTH: { message: 'A descriptor or registration has length 0.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_OVERLAP: { message: 'Two descriptors of one transfer write the same bytes at the destination.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_UNKNOWN_REGION: { message: 'A region id is not registered locally or not advertised by the peer.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_UNKNOWN_PEER: { message: 'The peer was never loaded, or its metadata was invalidated.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_CLOSED: { message: 'The agent, region or peer has been closed; the operation was not started or was abandoned.', http: 500, grpc: 'UNAVAILABLE' },
  KVF_ERR_BUSY: { message: 'The resource still has operations in flight (for example deregistering memory under a transfer).', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_DETACHED: { message: 'The ArrayBuffer behind a registration has been detached or transferred.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_BAD_METADATA: {
    message: "Peer metadata or grant bytes are truncated, corrupt, of an unsupported version, inconsistent, or not that peer's.",
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_PROVIDER_MISMATCH: { message: 'The peer uses another libfabric provider or address format than this agent.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_TOO_LARGE: {
    message: 'A notification or allocation exceeds its limit, or the region table is full (live regions and grants).',
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_TIMEOUT: { message: 'The operation did not finish within its timeout.', http: 504, grpc: 'DEADLINE_EXCEEDED' },
  KVF_ERR_PEER_UNREACHABLE: {
    message: "The peer's fabric address cannot be reached from this agent (a loopback address of a peer on another host or in another container).",
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_BACKEND_UNSUPPORTED: { message: 'NIXL_BACKEND (or the backend option) names a backend kvfabric does not implement.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_PROVIDER_UNAVAILABLE: {
    message: 'No libfabric provider matches the requested provider, endpoint type and capabilities.',
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_PROVIDER: { message: 'libfabric returned an error; errno and providerMessage (fi_strerror) carry its details.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_ALLOC: { message: 'Memory could not be allocated (hugepages missing, memlock limit, out of memory).', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_REMOTE_ACCESS: {
    message: 'The peer does not grant this access: the region is not advertised (deregistered, revoked, never advertised) or the key is wrong.',
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_FAST_PATH: {
    message: 'The same-host fast path (cross-memory attach) failed: the peer process is gone or the kernel refused access.',
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_BAD_MODEL: { message: 'A model file (GGUF) is truncated, corrupt, of an unsupported version, or inconsistent.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_UNSUPPORTED_TENSOR_TYPE: { message: 'A model tensor uses a type the reference engine cannot compute with.', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_POOL_EXHAUSTED: { message: 'The KV block pool has no free block left for the sequence.', http: 503, grpc: 'RESOURCE_EXHAUSTED' },
  KVF_ERR_CONTEXT_OVERFLOW: { message: "The prompt plus generated tokens exceed the model's context length.", http: 400, grpc: 'INVALID_ARGUMENT' },
  KVF_ERR_BAD_CONFIG: {
    message: 'A serving configuration (flags, env, file) fails its schema: unknown key, wrong type, impossible value.',
    http: 500,
    grpc: 'INTERNAL',
  },
  KVF_ERR_BAD_REQUEST: { message: 'An HTTP request body is malformed or fails the API schema.', http: 400, grpc: 'INVALID_ARGUMENT' },
  KVF_ERR_UNKNOWN_MODEL: { message: 'The request names a model this deployment does not serve.', http: 404, grpc: 'INTERNAL' },
  KVF_ERR_NO_WORKER: { message: 'No healthy worker of the needed role is known to the router.', http: 503, grpc: 'INTERNAL' },
  KVF_ERR_WORKER_FAILED: { message: 'A worker failed, died or timed out while serving the request.', http: 502, grpc: 'INTERNAL' },
  KVF_ERR_LAYOUT_MISMATCH: {
    message: 'Prefill and decode workers hold K/V in different layouts (model, block size or dtype).',
    http: 500,
    grpc: 'FAILED_PRECONDITION',
  },
  // HTTP 502 for this and the next two: the cluster refused the frontend's own call, a deployment fault, not the client's.
  KVF_ERR_UNAUTHENTICATED: {
    message: 'A control-plane call did not prove the cluster token (missing, wrong, stale or replayed proof).',
    http: 502,
    grpc: 'UNAUTHENTICATED',
  },
  KVF_ERR_WRONG_ROLE: {
    message: 'A worker was asked for an RPC its role does not serve (e.g. Prefill on a decode worker).',
    http: 502,
    grpc: 'PERMISSION_DENIED',
  },
  KVF_ERR_CANCELLED: { message: 'The work was cancelled because its request ended (client gone, timed out, or cancelled).', http: 500, grpc: 'INTERNAL' },
  KVF_ERR_OVERLOADED: {
    message: 'The frontend or a worker already has as much work as it admits; retry after the Retry-After delay.',
    http: 429,
    grpc: 'RESOURCE_EXHAUSTED',
  },
  KVF_ERR_BAD_HANDLE: {
    message: 'A KV handle or prefill result was forged, altered, expired, used before, or names blocks the worker does not hold for that request.',
    http: 502,
    grpc: 'PERMISSION_DENIED',
  },
  KVF_ERR_NO_GPU: {
    message: 'GPU memory was asked for on a host where the CUDA driver (libcuda.so.1) does not load or sees no device.',
    http: 500,
    grpc: 'FAILED_PRECONDITION',
  },
  KVF_ERR_CUDA: { message: "A CUDA driver call failed; the message and providerMessage carry the driver's error text.", http: 500, grpc: 'INTERNAL' },
} as const satisfies Record<`KVF_ERR_${string}`, ErrorEntry>;

export type ErrorCode = keyof typeof ERROR_REGISTRY;

/** Code → meaning: the registry's messages, as the public API has always exported them. */
export const ERROR_CODES = Object.fromEntries(Object.entries(ERROR_REGISTRY).map(([code, entry]) => [code, entry.message])) as {
  readonly [C in ErrorCode]: (typeof ERROR_REGISTRY)[C]['message'];
};

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === 'string' && Object.hasOwn(ERROR_REGISTRY, code);
}
