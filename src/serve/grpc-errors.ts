// KvfError ⇄ gRPC status. A worker's error crosses the control plane as a status code plus the stable
// kvfabric code in the trailing metadata (`kvf-code`), so the frontend can answer with the same code. The
// status of each code is in the registry (src/common/error-registry.ts).
import { KvfError } from '../common/errors.js';
import { ERROR_REGISTRY, isErrorCode, type ErrorCode } from '../common/error-registry.js';
import { grpc } from './rpc.js';

/** The code's gRPC status from the registry; INTERNAL for anything that is not a registered code. */
function grpcStatus(code: string): grpc.status {
  return isErrorCode(code) ? grpc.status[ERROR_REGISTRY[code].grpc] : grpc.status.INTERNAL;
}

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  const code: ErrorCode = err instanceof KvfError ? err.code : 'KVF_ERR_WORKER_FAILED';
  const metadata = new grpc.Metadata();
  metadata.set('kvf-code', code);
  return { code: grpcStatus(code), details: `${code}: ${(err as Error).message}`, metadata };
}

/** The KvfError behind a failed call: the worker's own code when it sent one, else KVF_ERR_WORKER_FAILED. */
export function fromServiceError(err: unknown, what: string): KvfError {
  if (err instanceof KvfError) return err;
  const e = err as Partial<grpc.ServiceError>;
  const sent = e.metadata?.get('kvf-code')[0];
  if (typeof sent === 'string' && isErrorCode(sent)) {
    const details = (e.details ?? '').replace(`${sent}: `, '');
    return new KvfError(sent, `${what}: ${details}`, { cause: err });
  }
  const reason = e.code === grpc.status.DEADLINE_EXCEEDED ? 'timed out' : (e.details ?? e.message ?? String(err));
  return new KvfError('KVF_ERR_WORKER_FAILED', `${what}: ${reason}`, { cause: err });
}
