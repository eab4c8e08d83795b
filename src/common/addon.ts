// Finds and loads the addon (build/Release/kvfabric.node, or a prebuild), once for the whole package, and declares the engine's half of
// its surface. The transfer half (agents, grants, host memory) is declared in src/fabric/native.ts, which
// widens this same module's type, so that the engine and serving code need nothing from src/fabric.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface NativeEngineInfo {
  layers: number;
  embedding: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  contextLength: number;
  tokensPerBlock: number;
  dtype: 'f16' | 'f32';
  blockBytes: number;
  sectionBytes: number;
  numBlocks: number;
  freeBlocks: number;
  threads: number;
  /** Wall seconds spent in matrix products and in attention since the engine was made (NaN while a forward pass runs). */
  matmulSeconds: number;
  attentionSeconds: number;
}

export interface StepTimes {
  computeSeconds: number;
  handOffSeconds: number;
}

export declare class NativeEngine {
  static blockBytes(modelPath: string, tokensPerBlock: number, f32: boolean): number;
  constructor(modelPath: string, pool: Uint8Array, options: { tokensPerBlock?: number; f32?: boolean; threads?: number });
  info(): NativeEngineInfo;
  /** The last batched step's compute on the worker thread, and the thread hand-off around it (zeros before any). */
  lastStepTimes(): StepTimes;
  allocate(count: number): Int32Array;
  free(blocks: Int32Array): void;
  claim(blocks: Int32Array): void;
  /** Logits of the last token; one token decodes, several prefill. */
  /** cancel[0] set non-zero stops the pass at its next layer (KVF_ERR_CANCELLED). */
  forward(tokens: Int32Array, table: Int32Array, startPos: number, cancel?: Int32Array): Promise<Float32Array>;
  /**
   * One batched step over several sequences; per entry its last token's logits, null when `logits` is false, or
   * the Error that dropped it (cancel[0] raised, invalid arguments) while the others ran.
   */
  step(
    entries: Array<{ tokens: Int32Array; table: Int32Array; startPos: number; logits?: boolean; cancel?: Int32Array }>,
  ): Promise<Array<Float32Array | null | Error>>;
  close(): void;
}

/** The exports every part of kvfabric relies on; src/fabric/native.ts extends it with the transfer API. */
export interface Addon {
  NativeEngine: typeof NativeEngine;
}

const require = createRequire(import.meta.url);
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

// KVF_ADDON selects another build of the addon (the ASan build, for instance); otherwise node-gyp-build
// picks build/Release or prebuilds/<platform>-<arch>.
export const addon: Addon = process.env.KVF_ADDON ? (require(process.env.KVF_ADDON) as Addon) : (require('node-gyp-build')(root) as Addon);
