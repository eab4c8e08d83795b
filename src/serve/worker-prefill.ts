// A worker's Prefill and Reserve RPCs: the prompt's K/V computed into fresh blocks and held for the decode
// worker to pull (or pushed into the blocks it reserved), and, on a decode worker, blocks reserved for a push.
import type { KvfError } from '../common/errors.js';
import { ATTR, type Traced } from '../common/tracing.js';
import { Sampler } from '../engine/sampling.js';
import { blocksFor, kvBytesFor } from '../kv/plan.js';
import type { grpc, KvHandle, PrefillRequest, PrefillResponse, ReserveRequest } from './rpc.js';
import { deadlineOf, samplingOptions, whileCalled, type WorkerParts } from './worker-call.js';

export async function prefill(
  w: WorkerParts,
  req: PrefillRequest,
  call: grpc.ServerUnaryCall<PrefillRequest, PrefillResponse>,
  trace: Traced,
): Promise<PrefillResponse> {
  const started = performance.now();
  trace.span.setAttributes({ [ATTR.promptTokens]: req.tokens.length, [ATTR.kvMode]: req.pushTo ? 'push' : 'pull' });
  // A push target is checked before any work: only a handle its decode worker issued for this request.
  const pushTo = req.pushTo ? w.signer.verify(req.pushTo, { access: 'write', requestId: req.requestId }) : null;
  const sampler = new Sampler(samplingOptions(req.sampling));
  const done = w.work.admitPrefill(req.tokens.length, deadlineOf(call));
  const live = whileCalled(call);
  let blocks: number[] = [];
  let held = false;
  try {
    const need = blocksFor(w.kv.layout, req.tokens.length);
    trace.span.setAttribute(ATTR.kvBlocks, need);
    // Leading blocks this worker has cached are not computed again: the prompt runs from the first uncached position.
    const seq = await w.kv.sequence(req.tokens, need, live, deadlineOf(call));
    blocks = seq.blocks;
    const from = seq.reused * w.kv.layout.tokensPerBlock;
    trace.span.setAttribute('kvfabric.reused_blocks', seq.reused);
    const logits = await w.engine.prefill(req.tokens.slice(from), blocks, from, live);
    w.kv.publish(req.tokens, blocks, req.tokens.length);
    done(true);
    trace.span.setAttribute('kvfabric.prefill_ms', performance.now() - started);
    const firstToken = sampler.sample(logits);
    const reused = { reusedBlocks: seq.reused, reusedBytes: kvBytesFor(w.kv.layout, from) };
    const base = { firstToken, samplerState: sampler.state, workerId: w.id, kv: null, push: null, ...reused };
    const sign = (res: Omit<PrefillResponse, 'mac' | 'prefillMs'>): PrefillResponse =>
      w.signer.signResponse({ ...res, prefillMs: performance.now() - started }, req.requestId);
    if (call.cancelled) return sign(base);
    if (pushTo) {
      try {
        return sign({ ...base, push: await w.kv.push(req.requestId, pushTo, blocks, req.tokens.length, trace.context) });
      } catch (err) {
        // WRITEs that timed out may still read these blocks: they go back to the pool when those have ended.
        const settled = (err as KvfError).settled;
        if (settled) {
          const abandoned = blocks;
          blocks = [];
          void settled.then(() => w.kv.free(abandoned));
        }
        throw err;
      }
    }
    const kv = w.kv.holdFor(req.requestId, 'read', blocks, req.tokens.length, req.leaseMs);
    held = true;
    return sign({ ...base, kv });
  } finally {
    done(false);
    if (!held) w.kv.free(blocks);
  }
}

/**
 * Push mode: blocks for the prompt's K/V and the first generated position; Decode grows them as it generates. A
 * pool without room waits for blocks while the call lasts (WorkerKv.allocate).
 */
export async function reserve(w: WorkerParts, req: ReserveRequest, call: grpc.ServerUnaryCall<ReserveRequest, KvHandle>, trace: Traced): Promise<KvHandle> {
  const total = Math.min(req.tokens + 1, w.engine.model.contextLength);
  const need = blocksFor(w.kv.layout, total);
  trace.span.setAttributes({ [ATTR.promptTokens]: req.tokens, [ATTR.kvBlocks]: need });
  // The prompt's leading blocks this worker has cached are held with the reservation but not granted: the handle
  // names the blocks after them, and its tokens the positions held (the prefill worker writes from there).
  const prompt = req.prompt.length === req.tokens ? req.prompt : [];
  const { blocks, reused } = await w.kv.sequence(prompt, need, whileCalled(call), deadlineOf(call));
  trace.span.setAttribute('kvfabric.reused_blocks', reused);
  try {
    return w.kv.holdFor(req.requestId, 'write', blocks, reused * w.kv.layout.tokensPerBlock, req.leaseMs, reused);
  } catch (err) {
    w.kv.free(blocks);
    throw err;
  }
}
