// The Engine interface workers program against, and the reference implementation over the native Llama
// engine. The KV pool lives in memory the caller provides — normally a fabric-registered region — so blocks
// written here can be read by a peer, and blocks a peer wrote here are used in place.
import { KvfError, fromNative } from '../common/errors.js';
import { addon, type NativeEngine, type NativeEngineInfo } from '../common/addon.js';
import type { KvLayout } from '../kv/layout.js';
import { DEFAULT_TOKENS_PER_BLOCK } from '../kv/plan.js';
import { DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_STEP_TOKENS, StepBatcher, type BatchStats } from './batcher.js';

export { DEFAULT_MAX_BATCH_SEQUENCES, DEFAULT_MAX_STEP_TOKENS, type BatchStats } from './batcher.js';

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
  /**
   * A batch of sequences, each with its own tokens, block table and start position, run together (decodes and
   * prompt chunks in the same steps); resolves with each one's last-token logits, in order. Logits are
   * bit-identical to running each sequence alone. Rejects with the first entry's error once all have ended
   * (the others still ran). Concurrent prefill/decode/step calls share steps too.
   */
  step(batch: readonly StepEntry[]): Promise<Float32Array[]>;
  /** Steps run and the sequences and tokens they carried (batch occupancy). */
  readonly stats: BatchStats;
  close(): Promise<void>;
}

export interface StepEntry {
  tokens: readonly number[];
  blocks: readonly number[];
  startPos: number;
  signal?: AbortSignal;
}

export interface ReferenceEngineOptions {
  modelPath: string;
  /** KV pool bytes; a multiple of blockBytes(). Usually `agent.allocate(...).bytes`. */
  pool: Uint8Array;
  tokensPerBlock?: number;
  dtype?: 'f16' | 'f32';
  threads?: number;
  /** Sequences in one batched step at most (default 32). */
  maxBatchSequences?: number;
  /**
   * Tokens in one step at most (default 256): decodes take one each, prompts are cut into chunks that fill the
   * rest, so a long prompt does not stall the decodes running beside it for its whole prefill.
   */
  maxStepTokens?: number;
}

export class ReferenceEngine implements Engine {
  readonly model: ModelInfo;
  readonly layout: KvLayout;
  #native: NativeEngine | undefined;
  // The native engine runs one step at a time; calls that arrive meanwhile join the next one.
  readonly #batcher: StepBatcher;

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
    const limits = {
      maxBatchSequences: options.maxBatchSequences ?? DEFAULT_MAX_BATCH_SEQUENCES,
      maxStepTokens: options.maxStepTokens ?? DEFAULT_MAX_STEP_TOKENS,
    };
    this.#batcher = new StepBatcher(
      limits,
      info.tokensPerBlock,
      (entries) => this.#engine().step(entries),
      () => native.lastStepTimes(),
    );
  }

  get stats(): BatchStats {
    return this.#batcher.stats;
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

  async step(batch: readonly StepEntry[]): Promise<Float32Array[]> {
    const runs = await Promise.allSettled(batch.map((e) => this.#forward(Int32Array.from(e.tokens), e.blocks, e.startPos, e.signal)));
    const failed = runs.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    return runs.map((r) => (r as PromiseFulfilledResult<Float32Array>).value);
  }

  async close(): Promise<void> {
    await this.#batcher.idle();
    this.#native?.close();
    this.#native = undefined;
  }

  #forward(tokens: Int32Array, blocks: readonly number[], pos: number, signal?: AbortSignal): Promise<Float32Array> {
    if (!this.#native) return Promise.reject(new KvfError('KVF_ERR_CLOSED', 'engine is closed'));
    // Checked whole before the first chunk runs (each chunk's step checks its own positions again).
    const end = pos + tokens.length;
    if (Number.isInteger(pos) && pos >= 0 && end > this.model.contextLength) {
      const msg = `positions ${pos}..${end - 1} exceed the context length ${this.model.contextLength}`;
      return Promise.reject(new KvfError('KVF_ERR_CONTEXT_OVERFLOW', msg));
    }
    const covered = blocks.length * this.layout.tokensPerBlock;
    if (covered < end) {
      const msg = `block table of ${blocks.length} blocks covers ${covered} positions, ${end} needed`;
      return Promise.reject(new KvfError('KVF_ERR_INVALID_ARGUMENT', msg));
    }
    return this.#batcher.submit(tokens, Int32Array.from(blocks), pos, signal);
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
