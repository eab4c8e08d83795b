// The requester's side of the staged path: a transfer with device memory on either side, cut into pieces of
// at most one chunk (small blocks batched into one piece, large ones cut), `window` pieces in flight, so that the device copy of one piece (on this thread) overlaps
// the fabric operations of the others (on the rail threads). A local device side goes through this agent's
// pinned chunks; a remote device side through the owner's, asked for and answered on the notification channel
// (stage-protocol.ts). The transfer resolves once every byte is in the destination's memory, device included.
import { KvfError } from '../common/errors.js';
import { isErrorCode } from '../common/error-registry.js';
import type { BouncePool, Chunk } from './bounce-pool.js';
import { DeviceRegion } from './device-region.js';
import type { MemoryRegion } from './memory.js';
import type { DeviceRegionDescription } from './metadata.js';
import type { RemotePeer } from './peer.js';
import { STAGE, encodeStage, type StageMessage } from './stage-protocol.js';
import type { TransferOp, TransferReport } from './transfer-report.js';

export interface Segment {
  localOffset: number;
  remoteOffset: number;
  length: number;
}

/** What one chunk carries: segments between one local region and one of the peer's, at most a chunk in all. */
export interface StagedPiece {
  /** A host region, or a local device region. */
  local: MemoryRegion | DeviceRegion;
  /** The peer's host region id, or its device region. */
  remote: number | DeviceRegionDescription;
  segments: Segment[];
  /** The segments' total. */
  length: number;
}

export interface StagedHost {
  readonly name: string;
  requestPool(): BouncePool;
  /** The host path: one READ or WRITE of host ranges (the agent's transfer()). */
  fabric(op: TransferOp, peer: RemotePeer, d: HostDescriptor[], timeoutMs: number, notification?: Uint8Array): Promise<TransferReport>;
  /** A notification to the peer, failing after `timeoutMs`. */
  send(peer: RemotePeer, data: Buffer, timeoutMs: number): Promise<void>;
}

export interface HostDescriptor {
  local: MemoryRegion;
  localOffset: number;
  remote: number;
  remoteOffset: number;
  length: number;
}

interface Waiter {
  resolve: (m: StageMessage) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/** What the pieces' fabric operations add up to, for the transfer's report. */
export interface StagedTotals {
  rails: Set<number>;
  ops: number;
  providerPostMs: number;
}

export class StagedRequester {
  #waiters = new Map<string, Waiter>();
  #nextReq = 1;
  #closed = false;

  constructor(
    private readonly host: StagedHost,
    /** How long a release may take to send (the owner's lease ends the loan anyway). */
    private readonly releaseTimeoutMs: number,
  ) {}

  /** An owner's answer (GRANTED, DONE, ERROR) from `peer`; anything unasked for is dropped. */
  answer(peer: string, m: StageMessage): void {
    const w = this.#waiters.get(key(peer, m.req));
    if (!w) return;
    this.#waiters.delete(key(peer, m.req));
    clearTimeout(w.timer);
    if (m.type !== STAGE.error) return w.resolve(m);
    // The code came from the network: one this build does not know is reported as a refusal.
    const code = isErrorCode(m.code) ? m.code : 'KVF_ERR_REMOTE_ACCESS';
    w.reject(new KvfError(code, `${peer}: ${m.message}`, { peer }));
  }

  close(): void {
    this.#closed = true;
    for (const w of this.#waiters.values()) {
      clearTimeout(w.timer);
      w.reject(new KvfError('KVF_ERR_CLOSED', 'the agent closed while a staging request waited'));
    }
    this.#waiters.clear();
  }

  /** Runs every piece, `window` at a time; the first failure stops new pieces and is thrown once the others settle. */
  async run(op: TransferOp, peer: RemotePeer, pieces: StagedPiece[], window: number, deadline: number): Promise<StagedTotals> {
    const totals: StagedTotals = { rails: new Set(), ops: 0, providerPostMs: 0 };
    let next = 0;
    let failure: unknown;
    const worker = async (): Promise<void> => {
      while (failure === undefined && next < pieces.length) {
        const p = pieces[next++]!;
        try {
          for (const r of await this.#piece(op, peer, p, deadline)) {
            for (const rail of r.rails) totals.rails.add(rail);
            totals.ops += r.ops;
            totals.providerPostMs += r.providerPostMs;
          }
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(window, pieces.length) }, worker));
    if (failure !== undefined) throw failure;
    return totals;
  }

  async #piece(op: TransferOp, peer: RemotePeer, p: StagedPiece, deadline: number): Promise<TransferReport[]> {
    if (typeof p.remote === 'number') {
      return [
        await this.#viaLocalChunk(
          op,
          peer,
          p,
          p.remote,
          p.segments.map((g) => g.remoteOffset),
          deadline,
        ),
      ];
    }
    const remote = p.remote;
    const dir = op === 'READ' ? STAGE.out : STAGE.in;
    const req = this.#nextReq++;
    const ranges = p.segments.map((g) => ({ offset: g.remoteOffset, length: g.length }));
    const granted = await this.#ask(peer, { type: dir, req, region: remote.id, token: remote.token, ranges }, deadline);
    if (granted.type !== STAGE.granted) throw new KvfError('KVF_ERR_BAD_METADATA', `${peer.name} answered a staging request with message ${granted.type}`);
    let grantId: number;
    try {
      grantId = peer.addGrant(granted.grant);
    } catch (err) {
      this.#release(peer, req); // nothing of ours can touch a chunk we never had the keys of
      throw err;
    }
    // The owner laid the ranges out one after another in its chunk: the grant counts from the first.
    const inGrant = runningOffsets(p.segments);
    let ok = false;
    try {
      let r: TransferReport;
      if (op === 'READ') r = await this.#viaLocalChunk(op, peer, p, grantId, inGrant, deadline);
      else {
        // The commit rides on the WRITE itself: the owner sees it only after the bytes have landed.
        const done = this.#expect(peer.name, req, deadline);
        r = await this.#viaLocalChunk(op, peer, p, grantId, inGrant, deadline, encodeStage({ type: STAGE.commit, req }));
        await done;
      }
      ok = true;
      return [r];
    } finally {
      this.#forget(peer.name, req);
      peer.removeGrant(grantId);
      // After a failure the owner's lease takes the chunk back, and rests it: an operation of ours may be late.
      if (ok && op === 'READ') this.#release(peer, req);
    }
  }

  /**
   * One fabric operation between the piece's local side and `remote` (a host region id, or a grant's id for the
   * owner's chunk) at `remoteOffsets`: straight from and to a local host region, through a local chunk (its
   * segments one after another) for a local device region.
   */
  async #viaLocalChunk(
    op: TransferOp,
    peer: RemotePeer,
    p: StagedPiece,
    remote: number,
    remoteOffsets: number[],
    deadline: number,
    notification?: Uint8Array,
  ): Promise<TransferReport> {
    const local = p.local;
    if (!(local instanceof DeviceRegion)) {
      const ds = p.segments.map((g, i) => ({ local, localOffset: g.localOffset, remote, remoteOffset: remoteOffsets[i]!, length: g.length }));
      return this.host.fabric(op, peer, ds, remaining(deadline), notification);
    }
    const pool = this.host.requestPool();
    const chunk = await pool.acquire(remaining(deadline));
    const inChunk = runningOffsets(p.segments);
    let reusable = true;
    try {
      const view = (i: number) => chunk.bytes.subarray(inChunk[i]!, inChunk[i]! + p.segments[i]!.length);
      if (op === 'WRITE') p.segments.forEach((g, i) => local.copyTo(view(i), g.localOffset));
      const ds = p.segments.map((g, i) => ({
        local: pool.region,
        localOffset: chunk.offset + inChunk[i]!,
        remote,
        remoteOffset: remoteOffsets[i]!,
        length: g.length,
      }));
      let r: TransferReport;
      try {
        r = await this.host.fabric(op, peer, ds, remaining(deadline), notification);
      } catch (err) {
        // Timed out, the operation may still touch the chunk: it leaves the pool for good.
        if ((err as KvfError).code === 'KVF_ERR_TIMEOUT') reusable = false;
        throw err;
      }
      if (op === 'READ') p.segments.forEach((g, i) => local.copyFrom(view(i), g.localOffset));
      return r;
    } finally {
      if (reusable) pool.release(chunk as Chunk);
    }
  }

  /** Sends a request and waits for its answer; an owner without a free chunk (OVERLOADED) is asked again. */
  async #ask(peer: RemotePeer, m: StageMessage, deadline: number): Promise<StageMessage> {
    for (let backoffMs = 1; ; backoffMs = Math.min(backoffMs * 2, 50)) {
      const answer = this.#expect(peer.name, m.req, deadline);
      try {
        await this.host.send(peer, encodeStage(m), remaining(deadline));
        return await answer;
      } catch (err) {
        this.#forget(peer.name, m.req);
        if ((err as KvfError).code !== 'KVF_ERR_OVERLOADED' || remaining(deadline) <= backoffMs) throw err;
        await new Promise((resolve) => setTimeout(resolve, backoffMs));
      }
    }
  }

  /** The answer to `req`, by the deadline. Marked handled: a caller that failed first may never await it. */
  #expect(peer: string, req: number, deadline: number): Promise<StageMessage> {
    const answer = this.#wait(peer, req, deadline);
    answer.catch(() => {});
    return answer;
  }

  #wait(peer: string, req: number, deadline: number): Promise<StageMessage> {
    if (this.#closed) return Promise.reject(new KvfError('KVF_ERR_CLOSED', 'the agent is closing'));
    return new Promise((resolve, reject) => {
      const ms = remaining(deadline);
      const timer = setTimeout(() => {
        this.#waiters.delete(key(peer, req));
        reject(
          new KvfError('KVF_ERR_TIMEOUT', `${peer} did not answer staging request ${req} within ${ms} ms (it must have loaded this agent's metadata)`, {
            peer,
          }),
        );
      }, ms);
      this.#waiters.set(key(peer, req), { resolve, reject, timer });
    });
  }

  #forget(peer: string, req: number): void {
    const w = this.#waiters.get(key(peer, req));
    if (!w) return;
    clearTimeout(w.timer);
    this.#waiters.delete(key(peer, req));
  }

  #release(peer: RemotePeer, req: number): void {
    this.host.send(peer, encodeStage({ type: STAGE.release, req }), this.releaseTimeoutMs).catch(() => {
      // The owner's lease ends the chunk's loan anyway.
    });
  }
}

/** Where each segment starts when they follow each other: 0, len0, len0 + len1, … */
function runningOffsets(segments: readonly Segment[]): number[] {
  let at = 0;
  return segments.map((g) => {
    const o = at;
    at += g.length;
    return o;
  });
}

function key(peer: string, req: number): string {
  return `${peer}\u0000${req}`;
}

function remaining(deadline: number): number {
  return Math.max(1, Math.ceil(deadline - performance.now()));
}
