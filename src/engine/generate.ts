// Text generation on an Engine: prefill the prompt, then decode token by token with sampling, streaming
// valid UTF-8, honouring stop sequences, end-of-sequence tokens and max tokens. Blocks come from the
// engine's pool and go back to it when generation ends, whatever the outcome.
import type { Engine } from './engine.js';
import { Sampler, type SamplingOptions } from './sampling.js';
import { TextStream } from './text-stream.js';
import type { Tokenizer } from './tokenizer.js';
import { KvfError } from '../fabric/errors.js';

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
  const total = Math.min(prompt.length + maxTokens, engine.model.contextLength);
  if (prompt.length >= engine.model.contextLength) {
    throw new KvfError('KVF_ERR_CONTEXT_OVERFLOW', `the prompt has ${prompt.length} tokens; the context holds ${engine.model.contextLength}`);
  }
  const blocks = engine.allocateBlocks(Math.ceil(total / engine.layout.tokensPerBlock));
  try {
    const sampler = new Sampler(options);
    const ends = new Set([tokenizer.eosId, tokenizer.eotId].filter((t): t is number => t !== undefined));
    const stream = new TextStream(tokenizer, options.stop ?? []);
    const emit = (piece: string): void => {
      if (piece) options.onText?.(piece);
    };
    const tokens: number[] = [];
    let logits = await engine.prefill(prompt, blocks, 0);
    let finishReason: Generation['finishReason'] = 'length';
    for (let pos = prompt.length; tokens.length < maxTokens && pos < total; pos++) {
      const token = sampler.sample(logits);
      if (ends.has(token)) {
        finishReason = 'stop';
        break;
      }
      tokens.push(token);
      emit(stream.push(token));
      if (stream.stopped) {
        finishReason = 'stop';
        break;
      }
      if (tokens.length < maxTokens && pos + 1 < total) logits = await engine.decode(token, blocks, pos);
    }
    emit(stream.finish());
    const text = stream.text;
    return { text, tokens, promptTokens: prompt.length, finishReason };
  } finally {
    engine.freeBlocks(blocks);
  }
}
