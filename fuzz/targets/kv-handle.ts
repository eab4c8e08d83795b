// KV handles and the control-plane messages that carry them (proto/kvfabric/v1/worker.proto): bytes are
// decoded with the gRPC service's own deserializers (what grpc-js runs on a call), then checked the way a
// worker checks them (HandleSigner.verify, HandOffGate.check) and, for a pull, planned up to the fabric as
// Worker.#pull does. A message protobufjs cannot decode never reaches kvfabric (grpc-js answers INTERNAL),
// so decode failures end the input; from there on only KvfError may come out.
//
// Random bytes never carry a valid MAC, so half the modes sign what was decoded with the cluster's key first:
// that is a handle a (buggy or compromised) worker of this cluster issued, and the checks behind the MAC and
// the planning must still hold.
//   byte0 % 6: 0 PrefillRequest (push_to verified), 1 DecodeRequest (hand-off gate), 2 KvHandle (verify),
//   3..5 the same with every handle and prefill result signed.
import { createHash } from 'node:crypto';

import { decodeGrant } from '../../src/fabric/grants.js';
import { decodeMetadata } from '../../src/fabric/metadata.js';
import { BlockLeases } from '../../src/kv/leases.js';
import { blockRuns, planKvCopy, rangesInRuns, sameGeometry } from '../../src/kv/plan.js';
import type { KvGeometry } from '../../src/kv/layout.js';
import { WorkerService, type DecodeRequest, type KvHandle, type PrefillRequest } from '../../src/serve/rpc.js';
import { HandOffGate } from '../../src/serve/security/hand-off.js';
import { HandleSigner } from '../../src/serve/security/handles.js';
import { guarded } from './common.js';

const signer = new HandleSigner(createHash('sha256').update('kvfabric fuzz handle key').digest());
const self = { workerId: 'decode-0', agentName: 'decode-0-agent' };
// The tiny model's K/V layout (scripts/make-tiny-model.mjs), as the decode worker's own.
const CONTEXT = 256;
const LAYOUT: KvGeometry & { blockBytes: number } = {
  numLayers: 2,
  kvHeads: 2,
  headDim: 16,
  tokensPerBlock: 16,
  dtype: 'f16',
  blockBytes: 2 * 2 * 2 * 16 * 16 * 2,
};

function deserialize<T>(method: 'Prefill' | 'Decode' | 'Reserve', side: 'request' | 'response', bytes: Buffer): T | undefined {
  const def = WorkerService[method]!;
  try {
    return (side === 'request' ? def.requestDeserialize(bytes) : def.responseDeserialize(bytes)) as T;
  } catch {
    return undefined; // protobufjs refused the bytes: grpc-js answers INTERNAL, kvfabric never sees them
  }
}

function signed(h: KvHandle | null): KvHandle | null {
  if (!h) return h;
  const { mac: _mac, ...rest } = h;
  return signer.sign(rest);
}

/** What the decode worker does with a pull handle after the gate, short of the fabric (Worker.#pull, #throughGrants). */
function planPull(kv: KvHandle): void {
  // The worker allocates blocks for the prompt, which its context bounds (the gate ties kv.tokens to it).
  const local = Array.from({ length: Math.ceil(Math.min(kv.tokens, CONTEXT) / LAYOUT.tokensPerBlock) }, (_, i) => i);
  const ranges = planKvCopy(LAYOUT, kv.blocks, local, kv.tokens);
  const l = kv.layout;
  if (!l || !sameGeometry({ ...l, dtype: l.dtype as KvGeometry['dtype'] }, LAYOUT)) return; // KVF_ERR_LAYOUT_MISMATCH there
  const runs = blockRuns(kv.blocks);
  if (kv.grants.length !== runs.length) return; // KVF_ERR_BAD_HANDLE there
  decodeMetadata(kv.agentMetadata);
  for (const g of kv.grants) decodeGrant(g);
  rangesInRuns(ranges, 'src', runs, LAYOUT.blockBytes);
}

export function check(data: Buffer): void {
  if (data.length === 0) return;
  const mode = data[0]! % 6;
  const sign = mode >= 3;
  const bytes = data.subarray(1);
  switch (mode % 3) {
    case 0: {
      const req = deserialize<PrefillRequest>('Prefill', 'request', bytes);
      if (!req) return;
      if (sign) req.pushTo = signed(req.pushTo);
      if (req.pushTo) signer.verify(req.pushTo, { access: 'write', requestId: req.requestId });
      return;
    }
    case 1: {
      const req = deserialize<DecodeRequest>('Decode', 'request', bytes);
      if (!req) return;
      if (sign && req.prefill) {
        const { mac: _mac, ...rest } = req.prefill;
        req.prefill = signer.signResponse({ ...rest, kv: signed(rest.kv) }, req.requestId);
      }
      if (sign) req.reserved = signed(req.reserved);
      const leases = new BlockLeases({ free: () => {} });
      if (new HandOffGate(signer, self, leases).check(req) === 'pull') planPull(req.prefill!.kv!);
      return;
    }
    default: {
      const handle = deserialize<KvHandle>('Reserve', 'response', bytes);
      if (!handle) return;
      const h = sign ? signed(handle)! : handle;
      signer.verify(h, { access: 'read', requestId: h.requestId }, 0);
      planPull(h);
    }
  }
}

export const fuzz = guarded(check);
