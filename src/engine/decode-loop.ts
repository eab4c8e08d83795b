// The steps every generation shares, whoever drives it (generate() in one process, the decode worker over gRPC):
// how much room the context leaves, and the token-by-token loop after the first token.
import { KvfError } from '../common/errors.js';
import type { Engine } from './engine.js';
import type { Sampler } from './sampling.js';

/**
 * The tokens the context leaves for generation after a prompt (and, resuming a migrated request, the tokens
 * already generated); KVF_ERR_CONTEXT_OVERFLOW when there is none. A fresh request needs room for one token;
 * a resumed one may already fill the context (it then ends at once, with what the client has).
 */
export function contextRoom(contextLength: number, promptTokens: number, generated = 0): number {
  const room = contextLength - promptTokens - generated;
  if (room < (generated > 0 ? 0 : 1)) {
    const resumed = generated > 0 ? ` (and ${generated} generated)` : '';
    throw new KvfError('KVF_ERR_CONTEXT_OVERFLOW', `the prompt has ${promptTokens} tokens${resumed}; the context holds ${contextLength}`);
  }
  return room;
}

export interface DecodeLoop {
  engine: Engine;
  sampler: Sampler;
  /** The sequence's block table; `grow` may extend it. */
  blocks: number[];
  /** The last token so far (already counted and delivered) and its position in the sequence. */
  token: number;
  pos: number;
  /** Tokens generated so far, and at most. */
  count: number;
  maxTokens: number;
  /** Where the sequence must end: the prompt plus maxTokens, or the context's end if sooner. */
  end: number;
  ends: ReadonlySet<number>;
  /** Before each pass at `pos`: the decode worker adds a block when the sequence crosses into a new one. */
  grow?: (pos: number) => void;
  /** Aborted: no further pass starts, and a running one stops at its next layer. */
  signal?: AbortSignal;
  /** Gets each new token; false ends generation there (a stop sequence matched). */
  onToken: (token: number) => boolean;
}

/**
 * Feeds the last token, samples the next, until an end token or onToken says stop ('stop'), or maxTokens or the
 * sequence's end is reached ('length'; also when the signal aborted). `count`: the tokens generated in all.
 */
export async function decodeLoop(o: DecodeLoop): Promise<{ finishReason: 'stop' | 'length'; count: number }> {
  let { token, count } = o;
  for (let pos = o.pos; count < o.maxTokens && pos + 1 < o.end && !o.signal?.aborted; pos++) {
    o.grow?.(pos);
    token = o.sampler.sample(await o.engine.decode(token, o.blocks, pos, o.signal));
    if (o.ends.has(token)) return { finishReason: 'stop', count };
    count++;
    if (!o.onToken(token)) return { finishReason: 'stop', count };
  }
  return { finishReason: 'length', count };
}
