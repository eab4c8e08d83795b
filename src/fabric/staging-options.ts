// The staged path's sizes and deadlines (AgentOptions.staging), their defaults and checks, in one place.
import { KvfError } from '../common/errors.js';
import { checkOptionKeys } from './options.js';

export interface StagingOptions {
  /** Bytes per bounce chunk: what one staging request and one fabric operation carry (blocks batched). Default 4 MiB. */
  chunkBytes?: number;
  /** Chunks of one transfer in flight at once (copy of one overlapping the fabric operation of others). Default 4. */
  window?: number;
  /** Chunks this agent lends to peers staging its device regions. Default 16. */
  serveChunks?: number;
  /** Chunks one peer may hold at once (its further requests wait their turn). Default 8. */
  perPeer?: number;
  /** How long a peer may hold a lent chunk before it is taken back. Default 10 s. */
  leaseMs?: number;
  /** How long a staging request waits for the owner's answer when the transfer has no timeoutMs. Default 30 s. */
  replyTimeoutMs?: number;
}

export const STAGING_DEFAULTS = Object.freeze({
  chunkBytes: 4 << 20,
  window: 4,
  serveChunks: 16,
  perPeer: 8,
  leaseMs: 10_000,
  replyTimeoutMs: 30_000,
  /** A chunk taken back from a peer rests this long before reuse (an operation accepted before the revoke may finish). */
  quarantineMs: 1_000,
});

export type Staging = typeof STAGING_DEFAULTS;

const KEYS = ['chunkBytes', 'window', 'serveChunks', 'perPeer', 'leaseMs', 'replyTimeoutMs'] as const satisfies readonly (keyof StagingOptions)[];
const LIMITS: Record<(typeof KEYS)[number], [number, number]> = {
  chunkBytes: [4096, 1 << 30],
  window: [1, 64],
  serveChunks: [1, 4096],
  perPeer: [1, 4096],
  leaseMs: [1, 2 ** 31 - 1],
  replyTimeoutMs: [1, 2 ** 31 - 1],
};

/** The options with defaults filled in; KVF_ERR_INVALID_ARGUMENT for an unknown key or a value out of range. */
export function stagingOptions(options: StagingOptions | undefined): Staging {
  if (options === undefined) return STAGING_DEFAULTS;
  checkOptionKeys(options, KEYS, 'Agent.create staging');
  const out: Record<string, number> = { ...STAGING_DEFAULTS };
  for (const k of KEYS) {
    const v = options[k];
    if (v === undefined) continue;
    const [lo, hi] = LIMITS[k];
    if (!Number.isInteger(v) || v < lo || v > hi) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `options.staging.${k} must be an integer from ${lo} to ${hi}`);
    out[k] = v;
  }
  return out as Staging;
}
