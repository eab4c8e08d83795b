// KvfError ⇄ gRPC status. A worker's error crosses the control plane as a status code plus the stable
// kvfabric code in the trailing metadata (`kvf-code`), so the frontend can answer with the same code.
import { KvfError, ERROR_CODES, type ErrorCode } from '../fabric/errors.js';
import { grpc } from './rpc.js';

const STATUS: Partial<Record<ErrorCode, grpc.status>> = {
  KVF_ERR_INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  KVF_ERR_CONTEXT_OVERFLOW: grpc.status.INVALID_ARGUMENT,
  KVF_ERR_BAD_REQUEST: grpc.status.INVALID_ARGUMENT,
  KVF_ERR_POOL_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  KVF_ERR_OVERLOADED: grpc.status.RESOURCE_EXHAUSTED,
  KVF_ERR_TIMEOUT: grpc.status.DEADLINE_EXCEEDED,
  KVF_ERR_CLOSED: grpc.status.UNAVAILABLE,
  KVF_ERR_LAYOUT_MISMATCH: grpc.status.FAILED_PRECONDITION,
  KVF_ERR_UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  KVF_ERR_WRONG_ROLE: grpc.status.PERMISSION_DENIED,
  KVF_ERR_BAD_HANDLE: grpc.status.PERMISSION_DENIED,
};

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  const code: ErrorCode = err instanceof KvfError ? err.code : 'KVF_ERR_WORKER_FAILED';
  const metadata = new grpc.Metadata();
  metadata.set('kvf-code', code);
  return { code: STATUS[code] ?? grpc.status.INTERNAL, details: `${code}: ${(err as Error).message}`, metadata };
}

/** The KvfError behind a failed call: the worker's own code when it sent one, else KVF_ERR_WORKER_FAILED. */
export function fromServiceError(err: unknown, what: string): KvfError {
  if (err instanceof KvfError) return err;
  const e = err as Partial<grpc.ServiceError>;
  const sent = e.metadata?.get('kvf-code')[0];
  if (typeof sent === 'string' && sent in ERROR_CODES) {
    const details = (e.details ?? '').replace(`${sent}: `, '');
    return new KvfError(sent as ErrorCode, `${what}: ${details}`, { cause: err });
  }
  const reason = e.code === grpc.status.DEADLINE_EXCEEDED ? 'timed out' : (e.details ?? e.message ?? String(err));
  return new KvfError('KVF_ERR_WORKER_FAILED', `${what}: ${reason}`, { cause: err });
}
