// Text generation on an Engine: prefill the prompt, then decode token by token with sampling, streaming
// valid UTF-8, honouring stop sequences, end-of-sequence tokens and max tokens. Blocks come from the
// engine's pool and go back to it when generation ends, whatever the outcome.
import type { Engine } from './engine.js';
import { Sampler, checkStop, type SamplingOptions } from './sampling.js';
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
    const stops = options.stop ?? [];
    const ends = new Set([tokenizer.eosId, tokenizer.eotId].filter((t): t is number => t !== undefined));
    const detok = tokenizer.decoder({ skipSpecial: true });
    const tokens: number[] = [];
    let text = '';
    let emitted = 0;
    let logits = await engine.prefill(prompt, blocks, 0);
    let finishReason: Generation['finishReason'] = 'length';
    let stoppedBySequence = false;
    for (let pos = prompt.length; tokens.length < maxTokens && pos < total; pos++) {
      const token = sampler.sample(logits);
      if (ends.has(token)) {
        finishReason = 'stop';
        break;
      }
      tokens.push(token);
      text += detok.push(token);
      const check = checkStop(text, stops);
      if (check.emit.length > emitted) {
        options.onText?.(check.emit.slice(emitted));
        emitted = check.emit.length;
      }
      if (check.stopped) {
        text = check.emit;
        finishReason = 'stop';
        stoppedBySequence = true;
        break;
      }
      if (tokens.length < maxTokens && pos + 1 < total) logits = await engine.decode(token, blocks, pos);
    }
    if (!stoppedBySequence) {
      text += detok.flush();
      if (text.length > emitted) options.onText?.(text.slice(emitted));
    }
    return { text, tokens, promptTokens: prompt.length, finishReason };
  } finally {
    engine.freeBlocks(blocks);
  }
}
