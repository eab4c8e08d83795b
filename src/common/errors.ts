// KvfError, the one error type kvfabric throws, and the conversion of the addon's coded errors into it.
import { isErrorCode, type ErrorCode } from './error-registry.js';

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
