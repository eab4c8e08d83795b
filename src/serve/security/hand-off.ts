// A decode worker's check of what a Decode call brings from prefill, before anything in it is used: a pull
// handle must come inside a signed prefill result from the prefill worker that issued it, for this request and
// this prompt, unexpired and not used here before; a push reservation must be this worker's own, taken over
// once, by the handle issued for it.
import { KvfError } from '../../common/errors.js';
import type { BlockLeases } from '../../kv/leases.js';
import type { DecodeRequest } from '../rpc.js';
import type { HandleSigner } from './handles.js';

/** Where a Decode's K/V comes from: pulled with the prefill worker's handle, pushed into our reservation, or prefilled here. */
export type HandOff = 'pull' | 'push' | 'local';

export class HandOffGate {
  readonly #signer: HandleSigner;
  readonly #self: { workerId: string; agentName: string };
  readonly #leases: BlockLeases;
  // Pull handles used here, until they expire: a replayed Decode finds its handle in this map.
  readonly #consumed = new Map<string, number>();

  constructor(signer: HandleSigner, self: { workerId: string; agentName: string }, leases: BlockLeases) {
    this.#signer = signer;
    this.#self = self;
    this.#leases = leases;
  }

  /** The hand-off `req` carries, checked; KVF_ERR_BAD_HANDLE for anything forged, altered, foreign, expired or used. */
  check(req: DecodeRequest): HandOff {
    if (req.prefill) this.#signer.verifyResponse(req.prefill, req.requestId);
    if (req.reserved) {
      const mine = this.#signer.verify(req.reserved, { access: 'write', requestId: req.requestId });
      if (mine.workerId !== this.#self.workerId || mine.agentName !== this.#self.agentName || !this.#leases.matches(req.requestId, mine.mac)) {
        throw new KvfError(
          'KVF_ERR_BAD_HANDLE',
          `no reservation here matches the handle for request '${req.requestId}' (not issued by this worker, already used, or its lease expired)`,
        );
      }
      return req.prefill?.push ? 'push' : 'local';
    }
    const kv = req.prefill?.kv;
    if (!kv) return 'local';
    this.#signer.verify(kv, { access: 'read', requestId: req.requestId });
    if (kv.workerId !== req.prefill!.workerId)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle was issued by ${kv.workerId}, not by the prefill worker ${req.prefill!.workerId}`);
    if (kv.tokens !== req.prompt.length)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle holds ${kv.tokens} positions; the prompt has ${req.prompt.length}`);
    this.#consume(kv.mac!, kv.leaseExpiresUnixMs);
    return 'pull';
  }

  #consume(mac: Uint8Array, expiresAt: number): void {
    const now = Date.now();
    for (const [key, until] of this.#consumed) if (until <= now) this.#consumed.delete(key);
    const key = Buffer.from(mac).toString('hex');
    if (this.#consumed.has(key)) throw new KvfError('KVF_ERR_BAD_HANDLE', 'the KV handle was used before (a replayed Decode)');
    this.#consumed.set(key, expiresAt);
  }
}
