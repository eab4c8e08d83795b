// Transfer planning for paged KV: which byte ranges of one pool go to which byte ranges of another so that
// the first `tokens` positions of a sequence land in the destination's blocks. Full blocks are whole
// contiguous ranges (the layout puts every layer's K and V of a block together), and runs of consecutive
// block ids on both sides merge into one range. A partly filled last block moves only its used slots —
// one range per layer, K/V and KV head — so the bytes moved equal the prompt's KV size exactly.
import { KvfError } from '../common/errors.js';
import type { KvGeometry, KvLayout } from './layout.js';

/** Positions per KV block unless told otherwise (engine and workers alike). */
export const DEFAULT_TOKENS_PER_BLOCK = 32;

export interface KvRange {
  srcOffset: number;
  dstOffset: number;
  length: number;
}

export function elementBytes(layout: Pick<KvLayout, 'dtype'>): number {
  return layout.dtype === 'f16' ? 2 : 4;
}

/** Bytes of K and V for `tokens` positions: what a transfer of a prompt's cache must move. */
export function kvBytesFor(layout: KvGeometry, tokens: number): number {
  return tokens * layout.numLayers * 2 * layout.kvHeads * layout.headDim * elementBytes(layout);
}

export function blockBytesOf(layout: KvGeometry): number {
  return kvBytesFor(layout, layout.tokensPerBlock);
}

export function blocksFor(layout: Pick<KvLayout, 'tokensPerBlock'>, tokens: number): number {
  return Math.ceil(tokens / layout.tokensPerBlock);
}

/** True when two pools hold K/V in the same layout, so blocks can move byte for byte. */
export function sameGeometry(a: KvGeometry, b: KvGeometry): boolean {
  return a.numLayers === b.numLayers && a.kvHeads === b.kvHeads && a.headDim === b.headDim && a.tokensPerBlock === b.tokensPerBlock && a.dtype === b.dtype;
}

/**
 * Ranges that copy positions [0, tokens) from `srcBlocks` (block table in the source pool) to `dstBlocks`
 * (block table in the destination pool). Offsets are from each pool's start.
 */
export function planKvCopy(layout: KvGeometry, srcBlocks: readonly number[], dstBlocks: readonly number[], tokens: number): KvRange[] {
  if (!Number.isInteger(tokens) || tokens < 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `tokens must be an integer ≥ 0, got ${tokens}`);
  const needed = blocksFor(layout, tokens);
  if (srcBlocks.length < needed || dstBlocks.length < needed) {
    throw new KvfError(
      'KVF_ERR_INVALID_ARGUMENT',
      `${tokens} tokens need ${needed} blocks; the source table has ${srcBlocks.length}, the destination ${dstBlocks.length}`,
    );
  }
  const blockBytes = blockBytesOf(layout);
  const ranges: KvRange[] = [];
  const push = (srcOffset: number, dstOffset: number, length: number): void => {
    const last = ranges[ranges.length - 1];
    if (last && last.srcOffset + last.length === srcOffset && last.dstOffset + last.length === dstOffset) last.length += length;
    else ranges.push({ srcOffset, dstOffset, length });
  };
  const full = Math.floor(tokens / layout.tokensPerBlock);
  for (let i = 0; i < full; i++) push(srcBlocks[i]! * blockBytes, dstBlocks[i]! * blockBytes, blockBytes);
  const used = tokens - full * layout.tokensPerBlock;
  if (used > 0) {
    const elem = elementBytes(layout);
    const row = layout.headDim * elem;
    const headBytes = layout.tokensPerBlock * row;
    const sectionBytes = layout.kvHeads * headBytes;
    const src = srcBlocks[full]! * blockBytes;
    const dst = dstBlocks[full]! * blockBytes;
    for (let section = 0; section < layout.numLayers * 2; section++) {
      for (let head = 0; head < layout.kvHeads; head++) {
        const at = section * sectionBytes + head * headBytes;
        ranges.push({ srcOffset: src + at, dstOffset: dst + at, length: used * row });
      }
    }
  }
  return ranges;
}

/** A run of consecutive block ids: one contiguous byte range of the pool, the unit a worker grants access to. */
export interface BlockRun {
  start: number;
  count: number;
}

/** The maximal runs of consecutive ids among `blocks`, in ascending order (whatever order the table lists them in). */
export function blockRuns(blocks: readonly number[]): BlockRun[] {
  const sorted = [...new Set(blocks)].sort((a, b) => a - b);
  const runs: BlockRun[] = [];
  for (const b of sorted) {
    const last = runs[runs.length - 1];
    if (last && last.start + last.count === b) last.count++;
    else runs.push({ start: b, count: 1 });
  }
  return runs;
}

/** A range re-addressed to the run (grant) that holds its `side`: offsets from that run's first byte. */
export interface RunRange {
  run: number;
  runOffset: number;
  /** The other side's offset, from its pool's start. */
  otherOffset: number;
  length: number;
}

/** Re-addresses one side of `ranges` to `runs` (split where a range crosses from one run into the next). */
export function rangesInRuns(ranges: readonly KvRange[], side: 'src' | 'dst', runs: readonly BlockRun[], blockBytes: number): RunRange[] {
  const out: RunRange[] = [];
  for (const r of ranges) {
    let at = side === 'src' ? r.srcOffset : r.dstOffset;
    let other = side === 'src' ? r.dstOffset : r.srcOffset;
    let left = r.length;
    while (left > 0) {
      const run = runs.findIndex((u) => at >= u.start * blockBytes && at < (u.start + u.count) * blockBytes);
      if (run < 0) throw new KvfError('KVF_ERR_OUT_OF_RANGE', `pool offset ${at} lies in no granted block run`);
      const u = runs[run]!;
      const length = Math.min(left, (u.start + u.count) * blockBytes - at);
      out.push({ run, runOffset: at - u.start * blockBytes, otherOffset: other, length });
      at += length;
      other += length;
      left -= length;
    }
  }
  return out;
}
