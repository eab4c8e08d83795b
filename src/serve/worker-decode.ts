// A decode worker's Decode RPC: the sequence's K/V pulled, pushed or computed here (local prefill, or a
// migrated request rebuilt), then tokens streamed until a stop token, the token limit or the context's end.
import { KvfError } from '../common/errors.js';
import { ATTR, spanFailed, startSpan, type Traced } from '../common/tracing.js';
import { contextRoom, decodeLoop } from '../engine/decode-loop.js';
import { Sampler } from '../engine/sampling.js';
import { blocksFor, kvBytesFor } from '../kv/plan.js';
import type { grpc, DecodeEvent, DecodeRequest, TransferReportMsg } from './rpc.js';
import type { HandOff } from './security/hand-off.js';
import { deadlineOf, samplingOptions, whileCalled, type WorkerParts } from './worker-call.js';
import { pullFallbackReason, type SequenceBlocks } from './worker-kv.js';

export async function decode(w: WorkerParts, call: grpc.ServerWritableStream<DecodeRequest, DecodeEvent>, trace: Traced): Promise<void> {
  const req = call.request;
  const live = whileCalled(call);
  const ctx = w.engine.model.contextLength;
  const resumed = req.generated.length;
  const { span } = trace;
  span.setAttributes({ [ATTR.promptTokens]: req.prompt.length, 'kvfabric.resumed_tokens': resumed });
  if (req.fallbackReason) span.setAttribute(ATTR.fallbackReason, req.fallbackReason);
  if (req.prompt.length === 0) {
    throw new KvfError('KVF_ERR_CONTEXT_OVERFLOW', `the prompt has 0 tokens (and ${resumed} generated); the context holds ${ctx}`);
  }
  contextRoom(ctx, req.prompt.length, resumed);
  if (resumed > 0 && (req.prefill || req.reserved))
    throw new KvfError('KVF_ERR_BAD_REQUEST', 'a resumed Decode carries no prefill result or reservation: this worker rebuilds the K/V itself');
  const handOff = w.handOffs.check(req);
  span.setAttribute('kvfabric.hand_off', handOff);
  const streamEnded = w.work.admitStream();
  const taken = req.reserved ? w.kv.leases.take(req.requestId) : undefined;
  // The sequence so far and the next position; the rest grows with generation (growFor), so a request that
  // may generate up to the context does not hold the whole context's blocks from its start.
  const start = req.prompt.length + resumed;
  // Room for the rest of the sequence (its max_tokens, within the context) is set aside at admission, so a running
  // sequence never fails for want of a block (WorkerKv.growFor).
  const now = blocksFor(w.kv.layout, Math.min(start + 1, ctx));
  const growth = blocksFor(w.kv.layout, Math.min(start + req.maxTokens, ctx)) - now;
  let seq: SequenceBlocks;
  try {
    // A pool without room waits for blocks while the call lasts (WorkerKv.allocate). The prompt's leading blocks
    // come from the prefix cache where this worker holds them (a reservation holds them already, ungranted).
    seq = taken ? { blocks: taken, reused: w.kv.heldPrefix(req.prompt, taken) } : await w.kv.sequence(req.prompt, now, live, deadlineOf(call), growth);
    if (taken) w.kv.promiseGrowth(taken, growth);
  } catch (err) {
    // No room for the sequence in time (KVF_ERR_POOL_EXHAUSTED), the call ended, or a reservation for another
    // prompt: the stream's slot and the reservation go back.
    streamEnded();
    if (taken) w.kv.free(taken);
    throw err;
  }
  const { blocks } = seq;
  span.setAttributes({ [ATTR.kvBlocks]: blocks.length, 'kvfabric.reused_blocks': seq.reused });
  // The tokens whose K/V the sequence holds, for the prefix cache when it ends: the prompt, then what is fed.
  const fed = [...req.prompt, ...req.generated];
  const tokens = deferredWrites(call);
  try {
    const first = await begin(w, req, handOff, seq, live, trace);
    span.setAttribute('kvfabric.local_prefill', first.transfer === null);
    if (first.fallbackReason) span.setAttribute(ATTR.fallbackReason, first.fallbackReason);
    if (call.cancelled) return;
    const { sampler } = first;
    const token = first.token;
    const reusedBytes = kvBytesFor(w.kv.layout, seq.reused * w.kv.layout.tokensPerBlock);
    call.write({
      event: 'started',
      started: {
        workerId: w.id,
        transfer: first.transfer,
        localPrefill: first.transfer === null,
        fallbackReason: first.fallbackReason,
        reusedBlocks: seq.reused,
        reusedBytes,
      },
    });
    fed.push(token);
    const ends = new Set(req.endTokens);
    let done = { finishReason: 'length' as 'stop' | 'length', count: 0 };
    // The first token: the client has it already when a prefill worker sampled it.
    if (ends.has(token)) done.finishReason = 'stop';
    else if (token >= 0) {
      if (!first.delivered) call.write({ event: 'token', token, samplerState: sampler.state });
      done = await decodeLoop({
        engine: w.engine,
        sampler,
        blocks,
        token,
        pos: start,
        count: 1,
        maxTokens: req.maxTokens,
        end: Math.min(start + req.maxTokens, ctx),
        ends,
        grow: (pos) => w.kv.growFor(blocks, pos),
        signal: live,
        onToken: (t) => {
          fed.push(t);
          tokens.write({ event: 'token', token: t, samplerState: sampler.state });
          return true;
        },
      });
    }
    tokens.flush();
    span.setAttributes({ [ATTR.completionTokens]: done.count, [ATTR.finishReason]: done.finishReason });
    if (!call.cancelled) call.write({ event: 'done', done: { finishReason: done.finishReason, completionTokens: done.count } });
  } finally {
    tokens.flush();
    streamEnded();
    // Every token but the last one fed has its K/V written (a pass that failed or stopped wrote its position
    // only in part: its token never reached `fed`), so the next turn of the conversation finds this one cached.
    if (fed.length > start) w.kv.publish(fed, blocks, fed.length - 1);
    w.kv.free(blocks);
  }
}

/**
 * A stream's token events, written after the sequence's next engine step has started rather than before it: the
 * batcher starts a step as soon as its callers came back (StepBatcher), and a write queued for the end of this turn
 * of the event loop then runs while the engine computes. Order is kept; flush() writes what is queued at once
 * (before the stream's last event, and before the call ends however it ends).
 */
function deferredWrites(call: grpc.ServerWritableStream<DecodeRequest, DecodeEvent>): { write(ev: DecodeEvent): void; flush(): void } {
  const queue: DecodeEvent[] = [];
  const flush = (): void => {
    for (const ev of queue.splice(0)) if (!call.cancelled) call.write(ev);
  };
  return {
    write(ev) {
      if (queue.push(ev) === 1) setImmediate(flush);
    },
    flush,
  };
}

/**
 * The K/V of the sequence so far in `blocks` and the token after it: pulled or pushed from a prefill worker
 * (whose first token it is), else computed here — the prompt, then (resuming a migrated request) one pass per
 * token the client already has, as the worker before computed them. `delivered`: the client has that token
 * already (a prefill worker sampled it, also when its K/V could not be pulled and is rebuilt here). `token` is
 * -1 when a resumed sequence already fills the context.
 */
async function begin(
  w: WorkerParts,
  req: DecodeRequest,
  handOff: HandOff,
  seq: SequenceBlocks,
  live: AbortSignal,
  trace: Traced,
): Promise<{ token: number; delivered: boolean; sampler: Sampler; transfer: TransferReportMsg | null; fallbackReason: string }> {
  const { blocks } = seq;
  let transfer: TransferReportMsg | null = null;
  let fallbackReason = req.fallbackReason;
  if (handOff === 'pull') {
    try {
      // Only the blocks this worker does not hold already move.
      transfer = await w.kv.pull(req.requestId, req.prefill!.kv!, blocks, trace.context, seq.reused);
      w.kv.publish(req.prompt, blocks, req.prompt.length);
    } catch (err) {
      fallbackReason = pullFallbackReason(req.prefill!.workerId, err);
      w.log.warn({ workerId: w.id, requestId: req.requestId, err }, 'KV pull failed; prefilling locally');
      if (w.kv.replaceAbandoned(blocks, err)) seq.reused = 0;
    }
  } else if (handOff === 'push') {
    transfer = req.prefill!.push;
  }
  const prefilled = req.prefill
    ? { token: req.prefill.firstToken, delivered: true, sampler: new Sampler({ ...samplingOptions(req.sampling), state: req.prefill.samplerState }) }
    : undefined;
  if (prefilled && transfer) return { ...prefilled, transfer, fallbackReason };
  const resumed = req.generated;
  const sampler = new Sampler({ ...samplingOptions(req.sampling), ...(resumed.length > 0 ? { state: req.samplerState } : {}) });
  // The K/V computed here: the prompt (local prefill), then the tokens of a migrated request.
  const span = startSpan('prefill.local', trace.context, undefined, () => ({
    [ATTR.workerId]: w.id,
    [ATTR.promptTokens]: req.prompt.length,
    'kvfabric.resumed_tokens': resumed.length,
    ...(fallbackReason ? { [ATTR.fallbackReason]: fallbackReason } : {}),
  }));
  const done = w.work.admitPrefill(req.prompt.length, Infinity);
  try {
    // Cached leading blocks are read, never written: the prompt runs from the first position past them.
    const from = seq.reused * w.kv.layout.tokensPerBlock;
    let logits = await w.engine.prefill(req.prompt.slice(from), blocks, from, live);
    w.kv.publish(req.prompt, blocks, req.prompt.length);
    done(true);
    if (prefilled) return { ...prefilled, transfer, fallbackReason };
    for (let i = 0; i < resumed.length; i++) {
      const pos = req.prompt.length + i;
      if (pos + 1 >= w.engine.model.contextLength) return { token: -1, delivered: true, sampler, transfer, fallbackReason };
      w.kv.growFor(blocks, pos);
      logits = await w.engine.decode(resumed[i]!, blocks, pos, live);
    }
    return { token: sampler.sample(logits), delivered: false, sampler, transfer, fallbackReason };
  } catch (err) {
    spanFailed(span, err);
    throw err;
  } finally {
    done(false);
    span.end();
  }
}
