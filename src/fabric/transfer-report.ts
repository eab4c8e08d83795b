// TransferReport, what kvfabric hands back for every finished transfer, and how one is read from a completion
// record the addon wrote (records.ts). A free function of the record and what was posted, so the Agent only
// looks up which transfer a record belongs to.
import type { Backend } from './config.js';
import { RECORD_FIELD as F, RECORD_FLAG } from './records.js';

export type TransferOp = 'READ' | 'WRITE';

/** What carried a transfer: the proof kvfabric reports instead of log lines. */
export interface TransferReport {
  op: TransferOp;
  peer: string;
  backend: Backend;
  provider: string;
  rails: number[];
  descriptors: number;
  bytes: number;
  durationMs: number;
  /** Decimal gigabytes per second over the transfer's duration. */
  gbps: number;
  notified: boolean;
  /** libfabric operations posted, after merging contiguous descriptors, striping and splitting at the message limit. */
  ops: number;
  /** From the post call until the provider had accepted every operation (posting cost, queueing included). */
  postMs: number;
  /** Time spent inside the provider's post calls (fi_write/fi_read), summed over the operations. */
  providerPostMs: number;
  /**
   * What carried the bytes: the libfabric provider ('fabric'), or the same-host fast path: cross-memory attach
   * ('cma') or a memcpy through the peer's shared memory mapped here ('mapped'). With device memory on a side:
   * CUDA IPC on one host ('cuda-ipc'), the provider reading and writing the device memory it registered
   * ('hmem', FI_HMEM), or pinned chunks and the provider ('staged').
   */
  path: 'fabric' | 'cma' | 'mapped' | 'cuda-ipc' | 'hmem' | 'staged';
  /** Device transfers: why not a faster path, when one was ruled out. */
  pathReason?: string;
  /** Posted and completed on the calling thread (the express lane, see AgentOptions.expressMaxBytes). */
  express: boolean;
}

/** What a transfer's report needs beyond its completion record. */
export interface Posted {
  op: TransferOp | 'NOTIFY';
  peer: string;
  descriptors: number;
  notified: boolean;
}

/** The report of the completion record at `r[i]`, for transfer `t` of an agent on `backend` and `provider`. */
export function readReport(r: Float64Array, i: number, t: Posted, backend: Backend, provider: string): TransferReport {
  const bytes = r[i + F.bytes]!;
  const durationMs = r[i + F.durationNs]! / 1e6;
  const postNs = r[i + F.postNs]!;
  const flags = r[i + F.flags]!;
  return {
    op: t.op as TransferOp,
    peer: t.peer,
    backend,
    provider,
    rails: railsFromMask(r[i + F.railsLow]!, r[i + F.railsHigh]!),
    descriptors: t.descriptors,
    bytes,
    durationMs,
    gbps: durationMs > 0 ? bytes / (durationMs * 1e6) : 0,
    notified: t.notified,
    ops: r[i + F.ops]!,
    postMs: postNs >= 0 ? postNs / 1e6 : 0,
    providerPostMs: r[i + F.providerPostNs]! / 1e6,
    path: flags & RECORD_FLAG.mapped ? 'mapped' : flags & RECORD_FLAG.cma ? 'cma' : 'fabric',
    express: (flags & RECORD_FLAG.express) !== 0,
  };
}

/** The rails a transfer used, from its record's mask, carried as two 32-bit halves (a double holds 53 bits; rails go to 64). */
export function railsFromMask(low: number, high: number): number[] {
  const out: number[] = [];
  for (let r = 0; r < 32; r++) if ((low >>> r) & 1) out.push(r);
  for (let r = 0; r < 32; r++) if ((high >>> r) & 1) out.push(32 + r);
  return out;
}
