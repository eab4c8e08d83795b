// Tokens in, text out: streaming detokenisation that never emits a split UTF-8 character or the start of
// what may become a stop sequence, and cuts the text at the first stop sequence. generate() uses it in one
// process; the serving frontend uses it on tokens streamed from a decode worker.
import { checkStop } from './sampling.js';
import type { Tokenizer } from './tokenizer.js';

export class TextStream {
  readonly #detok: ReturnType<Tokenizer['decoder']>;
  readonly #stops: readonly string[];
  #text = '';
  #emitted = 0;
  #stopped = false;

  constructor(tokenizer: Tokenizer, stops: readonly string[] = []) {
    this.#detok = tokenizer.decoder({ skipSpecial: true });
    this.#stops = stops;
  }

  /** True once a stop sequence appeared; the text is cut before it and further tokens are ignored. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** All text so far (after finish(): the final text). */
  get text(): string {
    return this.#text;
  }

  /** Adds a token; returns the text that became final (possibly ''). */
  push(token: number): string {
    if (this.#stopped) return '';
    this.#text += this.#detok.push(token);
    const check = checkStop(this.#text, this.#stops);
    if (check.stopped) {
      this.#text = check.emit;
      this.#stopped = true;
    }
    return this.#take(check.emit.length);
  }

  /** Ends the stream; returns the held-back rest (a partial character or an unfinished stop prefix). */
  finish(): string {
    if (this.#stopped) return '';
    this.#text += this.#detok.flush();
    return this.#take(this.#text.length);
  }

  #take(upTo: number): string {
    if (upTo <= this.#emitted) return '';
    const piece = this.#text.slice(this.#emitted, upTo);
    this.#emitted = upTo;
    return piece;
  }
}
