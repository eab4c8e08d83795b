// Text generation on an Engine: prefill the prompt, then decode token by token with sampling, streaming
// valid UTF-8, honouring stop sequences, end-of-sequence tokens and max tokens. Blocks come from the
// engine's pool and go back to it when generation ends, whatever the outcome.
import { contextRoom, decodeLoop } from './decode-loop.js';
import type { Engine } from './engine.js';
import { Sampler, type SamplingOptions } from './sampling.js';
import { TextStream } from './text-stream.js';
import type { Tokenizer } from './tokenizer.js';
import { KvfError } from '../common/errors.js';

export interface GenerateOptions extends SamplingOptions {
  maxTokens?: number;
  stop?: readonly string[];
  /** Called with each piece of text as soon as it is final (never a split character or a possible stop prefix). */
  onText?: (text: string) => void;
}

export interface Generation {
  text: string;
  tokens: number[];
  promptTokens: number;
  finishReason: 'stop' | 'length';
}

export async function generate(engine: Engine, tokenizer: Tokenizer, prompt: readonly number[], options: GenerateOptions = {}): Promise<Generation> {
  const maxTokens = options.maxTokens ?? 128;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'maxTokens must be a positive integer');
  if (prompt.length === 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'the prompt has no tokens');
  contextRoom(engine.model.contextLength, prompt.length);
  const end = Math.min(prompt.length + maxTokens, engine.model.contextLength);
  const blocks = engine.allocateBlocks(Math.ceil(end / engine.layout.tokensPerBlock));
  try {
    const sampler = new Sampler(options);
    const ends = new Set([tokenizer.eosId, tokenizer.eotId].filter((t): t is number => t !== undefined));
    const stream = new TextStream(tokenizer, options.stop ?? []);
    const tokens: number[] = [];
    /** Takes a token; false once a stop sequence matched. */
    const take = (token: number): boolean => {
      tokens.push(token);
      const piece = stream.push(token);
      if (piece) options.onText?.(piece);
      return !stream.stopped;
    };
    const first = sampler.sample(await engine.prefill(prompt, blocks, 0));
    let finishReason: Generation['finishReason'] = 'stop';
    if (!ends.has(first) && take(first)) {
      ({ finishReason } = await decodeLoop({ engine, sampler, blocks, token: first, pos: prompt.length, count: 1, maxTokens, end, ends, onToken: take }));
    }
    const rest = stream.finish();
    if (rest) options.onText?.(rest);
    return { text: stream.text, tokens, promptTokens: prompt.length, finishReason };
  } finally {
    engine.freeBlocks(blocks);
  }
}
