// A KV pool's layout, as the engine reports it and transfer planning (./plan.ts) reads it, and its wire form in
// the control plane's KV handles (the KvLayout message of worker.proto). Two workers can move blocks byte for
// byte only between identical layouts, so the conversions keep every field that decides that.

/** Pool layout `[numBlocks][numLayers][2 (K,V)][numKvHeads × tokensPerBlock × headDim]`, for transfer planning. */
export interface KvLayout {
  numBlocks: number;
  numLayers: number;
  kvHeads: number;
  headDim: number;
  tokensPerBlock: number;
  dtype: 'f16' | 'f32';
  blockBytes: number;
}

/** The fields that decide where each byte of a block lies (numBlocks and blockBytes follow from them or do not matter). */
export type KvGeometry = Pick<KvLayout, 'numLayers' | 'kvHeads' | 'headDim' | 'tokensPerBlock' | 'dtype'>;

/** KvLayout as proto-loader hands it over: the dtype is any string until checked. */
export interface KvLayoutMsg {
  numLayers: number;
  kvHeads: number;
  headDim: number;
  tokensPerBlock: number;
  dtype: string;
  blockBytes: number;
}

export function layoutToMsg(l: KvLayout): KvLayoutMsg {
  return { numLayers: l.numLayers, kvHeads: l.kvHeads, headDim: l.headDim, tokensPerBlock: l.tokensPerBlock, dtype: l.dtype, blockBytes: l.blockBytes };
}

/** A handle's layout as geometry (null when the handle had none); its dtype is taken as sent, for sameGeometry to judge. */
export function geometryFromMsg(l: KvLayoutMsg | null): KvGeometry | null {
  return (
    l && {
      numLayers: l.numLayers,
      kvHeads: l.kvHeads,
      headDim: l.headDim,
      tokensPerBlock: l.tokensPerBlock,
      dtype: l.dtype as KvLayout['dtype'],
    }
  );
}
