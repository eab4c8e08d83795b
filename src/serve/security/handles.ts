// KV handles that cannot be forged or altered. A worker that holds or reserves blocks for a request issues a
// handle naming them (request, worker, its agent's metadata, region, blocks, tokens, layout, expiry, access)
// under an HMAC-SHA256 with the handle key, which workers hold and the frontend does not: the frontend, the
// process that faces HTTP clients, relays handles but cannot make or change one. The receiving worker checks
// the MAC before it uses anything in the handle, so the agent metadata it dials (host, pid, regions) is the
// issuer's own, never the caller's. Expiry and single use are checked by the workers (handles.ts only says
// whether the handle is authentic and current).
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

import { KvfError } from '../../common/errors.js';
import type { KvHandle, PrefillResponse } from '../rpc.js';

/** What the holder of a handle may do with its blocks. */
export type HandleAccess = 'read' | 'write';

const VERSION = 'kvfabric-handle-v1';
const RESPONSE_VERSION = 'kvfabric-prefill-v1';

export class HandleSigner {
  readonly #key: Buffer;

  constructor(key: Buffer) {
    this.#key = key;
  }

  sign(handle: Omit<KvHandle, 'mac'>): KvHandle {
    return { ...handle, mac: this.#mac(canonicalHandle(handle)) };
  }

  /**
   * Throws KVF_ERR_BAD_HANDLE unless the handle was issued by a holder of the key, unaltered, for `access`
   * and `requestId`, and unexpired at `now`.
   */
  verify(handle: KvHandle | null | undefined, expect: { access: HandleAccess; requestId: string }, now = Date.now()): KvHandle {
    if (!handle) throw new KvfError('KVF_ERR_BAD_HANDLE', 'the request carries no KV handle');
    if (!this.#equal(handle.mac, canonicalHandle(handle)))
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle for request '${handle.requestId}' was not issued by a worker of this cluster, or was altered`);
    if (handle.access !== expect.access)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle grants ${handle.access || 'no'} access; this call needs ${expect.access}`);
    if (handle.requestId !== expect.requestId)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle belongs to request '${handle.requestId}', not '${expect.requestId}'`);
    if (handle.leaseExpiresUnixMs <= now)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle for request '${handle.requestId}' expired ${now - handle.leaseExpiresUnixMs} ms ago`);
    return handle;
  }

  /** A prefill worker's answer is signed too: its first token and push report decide what decode generates from. */
  signResponse(res: Omit<PrefillResponse, 'mac'>, requestId: string): PrefillResponse {
    return { ...res, mac: this.#mac(canonicalResponse(res, requestId)) };
  }

  verifyResponse(res: PrefillResponse, requestId: string): void {
    if (!this.#equal(res.mac, canonicalResponse(res, requestId))) {
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the prefill result for request '${requestId}' was not produced by a worker of this cluster, or was altered`);
    }
  }

  #mac(text: string): Buffer {
    return createHmac('sha256', this.#key).update(text).digest();
  }

  #equal(mac: Uint8Array | null | undefined, text: string): boolean {
    const expected = this.#mac(text);
    return mac != null && mac.length === expected.length && timingSafeEqual(expected, mac);
  }
}

// Canonical text of the signed fields: a JSON array, so field order and types are fixed; the metadata blob
// enters by its SHA-256.
function canonicalHandle(h: Omit<KvHandle, 'mac'>): string {
  const l = h.layout;
  return JSON.stringify([
    VERSION,
    h.access,
    h.requestId,
    h.workerId,
    h.agentName,
    sha256(h.agentMetadata),
    h.regionId,
    h.blocks,
    l ? [l.numLayers, l.kvHeads, l.headDim, l.tokensPerBlock, l.dtype, l.blockBytes] : null,
    h.tokens,
    h.leaseExpiresUnixMs,
    (h.grants ?? []).map((g) => sha256(g)),
  ]);
}

function canonicalResponse(r: Omit<PrefillResponse, 'mac'>, requestId: string): string {
  const p = r.push;
  const kvMac = r.kv?.mac?.length ? Buffer.from(r.kv.mac).toString('hex') : null;
  const push = p ? [p.op, p.backend, p.provider, p.rails, p.bytes, p.durationMs, p.descriptors, p.initiator, p.path] : null;
  return JSON.stringify([
    RESPONSE_VERSION,
    requestId,
    r.workerId,
    r.firstToken,
    r.samplerState,
    kvMac,
    push,
    r.prefillMs,
    r.reusedBlocks ?? 0,
    r.reusedBytes ?? 0,
  ]);
}

function sha256(bytes: Uint8Array | null | undefined): string {
  return createHash('sha256')
    .update(bytes ?? new Uint8Array())
    .digest('hex');
}
