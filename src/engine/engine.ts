// The Engine interface workers program against, and the reference implementation over the native Llama
// engine. The KV pool lives in memory the caller provides — normally a fabric-registered region — so blocks
// written here can be read by a peer, and blocks a peer wrote here are used in place.
import { KvfError, fromNative } from '../common/errors.js';
import { addon, type NativeEngine, type NativeEngineInfo } from '../common/addon.js';
import type { KvLayout } from '../kv/layout.js';
import { DEFAULT_TOKENS_PER_BLOCK } from '../kv/plan.js';

export type ModelInfo = Pick<NativeEngineInfo, 'layers' | 'embedding' | 'heads' | 'kvHeads' | 'headDim' | 'vocab' | 'contextLength'>;

export interface Engine {
  readonly model: ModelInfo;
  readonly layout: KvLayout;
  allocateBlocks(count: number): number[];
  /** Marks blocks as in use that were filled from outside (pulled from a peer). */
  claimBlocks(blocks: readonly number[]): void;
  freeBlocks(blocks: readonly number[]): void;
  readonly freeBlockCount: number;
  /**
   * Runs the prompt from `startPos`, writing its K/V through `blocks`; resolves with the last token's logits.
   * An aborted `signal` drops the pass if it is still queued, or stops it at its next layer (KVF_ERR_CANCELLED).
   */
  prefill(tokens: readonly number[], blocks: readonly number[], startPos?: number, signal?: AbortSignal): Promise<Float32Array>;
  /** One token at `pos`; resolves with its logits. `signal` as for prefill. */
  decode(token: number, blocks: readonly number[], pos: number, signal?: AbortSignal): Promise<Float32Array>;
  close(): Promise<void>;
}

export interface ReferenceEngineOptions {
  modelPath: string;
  /** KV pool bytes; a multiple of blockBytes(). Usually `agent.allocate(...).bytes`. */
  pool: Uint8Array;
  tokensPerBlock?: number;
  dtype?: 'f16' | 'f32';
  threads?: number;
}

export class ReferenceEngine implements Engine {
  readonly model: ModelInfo;
  readonly layout: KvLayout;
  #native: NativeEngine | undefined;
  // The native engine runs one forward pass at a time; calls queue here.
  #queue: Promise<unknown> = Promise.resolve();

  /** Bytes of one KV block for this model, to size the pool before loading. */
  static blockBytes(modelPath: string, options: { tokensPerBlock?: number; dtype?: 'f16' | 'f32' } = {}): number {
    return call(() => addon.NativeEngine.blockBytes(modelPath, options.tokensPerBlock ?? DEFAULT_TOKENS_PER_BLOCK, options.dtype === 'f32'));
  }

  constructor(options: ReferenceEngineOptions) {
    const native = call(
      () =>
        new addon.NativeEngine(options.modelPath, options.pool, {
          tokensPerBlock: options.tokensPerBlock ?? DEFAULT_TOKENS_PER_BLOCK,
          f32: options.dtype === 'f32',
          ...(options.threads !== undefined ? { threads: options.threads } : {}),
        }),
    );
    const info = native.info();
    this.#native = native;
    this.model = {
      layers: info.layers,
      embedding: info.embedding,
      heads: info.heads,
      kvHeads: info.kvHeads,
      headDim: info.headDim,
      vocab: info.vocab,
      contextLength: info.contextLength,
    };
    this.layout = {
      numBlocks: info.numBlocks,
      numLayers: info.layers,
      kvHeads: info.kvHeads,
      headDim: info.headDim,
      tokensPerBlock: info.tokensPerBlock,
      dtype: info.dtype,
      blockBytes: info.blockBytes,
    };
  }

  get freeBlockCount(): number {
    return this.#engine().info().freeBlocks;
  }

  /** Wall seconds the forward passes spent so far in matrix products and in attention (the rest: norms, RoPE, K/V stores); NaN during a pass. */
  get timings(): { matmulSeconds: number; attentionSeconds: number } {
    const info = this.#engine().info();
    return { matmulSeconds: info.matmulSeconds, attentionSeconds: info.attentionSeconds };
  }

  allocateBlocks(count: number): number[] {
    return Array.from(call(() => this.#engine().allocate(count)));
  }

  claimBlocks(blocks: readonly number[]): void {
    call(() => this.#engine().claim(Int32Array.from(blocks)));
  }

  freeBlocks(blocks: readonly number[]): void {
    call(() => this.#engine().free(Int32Array.from(blocks)));
  }

  prefill(tokens: readonly number[], blocks: readonly number[], startPos = 0, signal?: AbortSignal): Promise<Float32Array> {
    return this.#forward(Int32Array.from(tokens), blocks, startPos, signal);
  }

  decode(token: number, blocks: readonly number[], pos: number, signal?: AbortSignal): Promise<Float32Array> {
    return this.#forward(Int32Array.of(token), blocks, pos, signal);
  }

  async close(): Promise<void> {
    await this.#queue.catch(() => {});
    this.#native?.close();
    this.#native = undefined;
  }

  #forward(tokens: Int32Array, blocks: readonly number[], pos: number, signal?: AbortSignal): Promise<Float32Array> {
    if (!this.#native) return Promise.reject(new KvfError('KVF_ERR_CLOSED', 'engine is closed'));
    const engine = this.#native;
    const table = Int32Array.from(blocks);
    // The word the pass checks between layers; an abort raises it whether the pass has started or not.
    const cancel = new Int32Array(1);
    const onAbort = (): void => void (cancel[0] = 1);
    signal?.addEventListener('abort', onAbort, { once: true });
    const run = this.#queue
      .catch(() => {})
      .then(() => {
        if (signal?.aborted) throw new KvfError('KVF_ERR_CANCELLED', 'forward pass dropped before it ran: its request ended');
        return engine.forward(tokens, table, pos, cancel);
      })
      .catch((e: unknown) => {
        throw fromNative(e);
      })
      .finally(() => signal?.removeEventListener('abort', onAbort));
    this.#queue = run;
    return run;
  }

  #engine(): NativeEngine {
    if (!this.#native) throw new KvfError('KVF_ERR_CLOSED', 'engine is closed');
    return this.#native;
  }
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw fromNative(err);
  }
}
