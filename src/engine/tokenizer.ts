// Byte-level BPE tokenizer (GPT-2 style, as SmolLM2 uses), built from a GGUF file's vocabulary.
//
// It follows llama.cpp's llm_tokenizer_bpe (src/llama-vocab.cpp), which is also what Hugging Face
// `tokenizers` does for these models:
//   1. special tokens are cut out of the text first, as whole strings (leftmost, longest first):
//      user-defined tokens (type 4) always, control (3) and unknown (2) tokens only with parseSpecial;
//   2. the remaining text is pre-tokenized by the regexes of tokenizer.ggml.pre (see PRE_TOKENIZERS);
//   3. each piece's UTF-8 bytes are mapped to GPT-2's byte-to-unicode alphabet, then merged pair by pair,
//      always the pair of lowest merge rank, leftmost first, until no pair has a rank;
//   4. each resulting symbol is a vocabulary entry; one that is not is dropped (as both references do;
//      see bpe()), so text with such bytes does not round-trip.
// decode() reverses the byte mapping; a streaming decoder yields only complete UTF-8 text.
import { KvfError } from '../common/errors.js';
import { type GgufMetadata, readGgufMetadata } from './gguf-metadata.js';
import { Utf8StreamDecoder } from './utf8-stream.js';

/** tokenizer.ggml.token_type values (llama.cpp's llama_token_type). */
export enum TokenType {
  UNDEFINED = 0,
  NORMAL = 1,
  UNKNOWN = 2,
  CONTROL = 3,
  USER_DEFINED = 4,
  UNUSED = 5,
  BYTE = 6,
}

export interface EncodeOptions {
  /** Prepend the BOS token (default: the model's tokenizer.ggml.add_bos_token, false when absent). */
  addBos?: boolean;
  /** Append the EOS token (default: tokenizer.ggml.add_eos_token, false when absent). */
  addEos?: boolean;
  /**
   * Match control tokens such as `<|im_start|>` in the text (default false: they are plain text).
   * A function decides per occurrence, given its UTF-16 range [start, end) in `text` (chat rendering
   * uses it to parse the template's markers but not those inside message content).
   */
  parseSpecial?: boolean | ((start: number, end: number) => boolean);
}

export interface DecodeOptions {
  /** Leave out control tokens' text (`<|im_end|>` …) instead of rendering it (default false). */
  skipSpecial?: boolean;
}

// ----------------------------------------------------------------------------------------------------
// GPT-2 byte <-> unicode mapping: printable bytes stand for themselves, the other 68 map to U+0100 up.

const BYTE_TO_CHAR: readonly string[] = (() => {
  const map = new Array<string>(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
  return map;
})();

const CHAR_TO_BYTE: ReadonlyMap<number, number> = new Map(BYTE_TO_CHAR.map((c, b) => [c.codePointAt(0)!, b]));

// ----------------------------------------------------------------------------------------------------
// Pre-tokenizers. Each is a list of regexes applied in turn, as llama.cpp's unicode_regex_split does:
// every regex splits each piece from the previous one into its matches and the text between them.
// The GPT-2 regex carries Hugging Face's trailing `|\s+` (llama.cpp's hand-written GPT-2 splitter
// behaves the same). `\s` is written \p{White_Space}: the Unicode property that Oniguruma (Hugging Face)
// and llama.cpp's unicode tables use. JavaScript's own `\s` differs (it has U+FEFF, lacks U+0085), and
// the oracle fixture has strings that tell the two apart.

const GPT2_REGEX = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+/gu;
/** Every digit a piece of its own (Hugging Face's Digits(individual_digits=true)). */
const DIGIT_REGEX = /\p{N}/gu;

/** tokenizer.ggml.pre -> regexes, from llama.cpp's llama_vocab::impl::load / llm_tokenizer_bpe. */
const PRE_TOKENIZERS: Readonly<Record<string, readonly RegExp[]>> = {
  default: [GPT2_REGEX],
  gpt2: [GPT2_REGEX],
  mpt: [GPT2_REGEX],
  olmo: [GPT2_REGEX],
  jais: [GPT2_REGEX],
  smollm: [DIGIT_REGEX, GPT2_REGEX],
  starcoder: [DIGIT_REGEX, GPT2_REGEX],
  refact: [DIGIT_REGEX, GPT2_REGEX],
  'command-r': [DIGIT_REGEX, GPT2_REGEX],
  codeshell: [DIGIT_REGEX, GPT2_REGEX],
  exaone: [DIGIT_REGEX, GPT2_REGEX],
  minerva: [DIGIT_REGEX, GPT2_REGEX],
};

export const SUPPORTED_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_TOKENIZERS);

function splitByRegexes(text: string, regexes: readonly RegExp[]): string[] {
  let pieces = [text];
  for (const re of regexes) {
    const next: string[] = [];
    for (const piece of pieces) {
      let last = 0;
      for (const m of piece.matchAll(re)) {
        if (m.index > last) next.push(piece.slice(last, m.index));
        if (m[0].length > 0) next.push(m[0]);
        last = m.index + m[0].length;
      }
      if (last < piece.length) next.push(piece.slice(last));
    }
    pieces = next;
  }
  return pieces;
}

function escapeRegex(s: string): string {
  // Only syntax characters: with the u flag, escaping anything else ('-', letters…) is a SyntaxError.
  return s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
}

// ----------------------------------------------------------------------------------------------------
// BPE merge of one pre-tokenized piece: a linked list of symbols and a min-heap of candidate pairs
// ordered by (rank, left position), so long pieces (whitespace runs) stay O(n log n).

class PairHeap {
  private rank: number[] = [];
  private left: number[] = [];
  private right: number[] = [];

  get size(): number {
    return this.rank.length;
  }

  private less(i: number, j: number): boolean {
    return this.rank[i]! < this.rank[j]! || (this.rank[i] === this.rank[j] && this.left[i]! < this.left[j]!);
  }

  private swap(i: number, j: number): void {
    for (const a of [this.rank, this.left, this.right]) {
      const t = a[i]!;
      a[i] = a[j]!;
      a[j] = t;
    }
  }

  push(rank: number, left: number, right: number): void {
    this.rank.push(rank);
    this.left.push(left);
    this.right.push(right);
    let i = this.rank.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      this.swap(i, p);
      i = p;
    }
  }

  /** Removes the minimum; returns [rank, left, right]. */
  pop(): [number, number, number] {
    const top: [number, number, number] = [this.rank[0]!, this.left[0]!, this.right[0]!];
    const last = this.rank.length - 1;
    this.swap(0, last);
    this.rank.pop();
    this.left.pop();
    this.right.pop();
    let i = 0;
    const n = this.rank.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.less(l, m)) m = l;
      if (r < n && this.less(r, m)) m = r;
      if (m === i) break;
      this.swap(i, m);
      i = m;
    }
    return top;
  }
}

// ----------------------------------------------------------------------------------------------------

const WORD_CACHE_LIMIT = 65_536;

export class Tokenizer {
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly eosId: number | undefined;
  readonly unkId: number | undefined;
  readonly padId: number | undefined;
  /** tokenizer.ggml.eot_token_id, when present (end of turn). */
  readonly eotId: number | undefined;
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** tokenizer.ggml.pre as read (or 'default'). */
  readonly pre: string;

  private readonly tokens: readonly string[];
  private readonly types: ArrayLike<number>;
  private readonly tokenToIdMap = new Map<string, number>();
  /** ranks.get(left).get(right) = merge rank. */
  private readonly ranks = new Map<string, Map<string, number>>();
  private readonly regexes: readonly RegExp[];
  private readonly specialAll: RegExp | null;
  private readonly specialUser: RegExp | null;
  private readonly pieceCache = new Map<string, number[]>();
  private readonly bytesCache: (Uint8Array | undefined)[];
  #maxTokenBytes: number | undefined;

  private constructor(meta: GgufMetadata) {
    const src = meta.source;
    const bad = (msg: string): KvfError => new KvfError('KVF_ERR_BAD_MODEL', `${src}: ${msg}`);

    const model = meta.getString('tokenizer.ggml.model');
    if (model !== 'gpt2') throw bad(`tokenizer.ggml.model '${model}' is not supported (only 'gpt2', byte-level BPE)`);
    this.pre = meta.getString('tokenizer.ggml.pre', 'default');
    const regexes = PRE_TOKENIZERS[this.pre];
    if (regexes === undefined) {
      throw bad(`tokenizer.ggml.pre '${this.pre}' is not supported (supported: ${SUPPORTED_PRE_TOKENIZERS.join(', ')})`);
    }
    this.regexes = regexes;

    this.tokens = meta.getStringArray('tokenizer.ggml.tokens');
    this.vocabSize = this.tokens.length;
    if (this.vocabSize === 0) throw bad('tokenizer.ggml.tokens is empty');
    if (meta.has('tokenizer.ggml.token_type')) {
      this.types = meta.getIntArray('tokenizer.ggml.token_type');
      if (this.types.length !== this.vocabSize) {
        throw bad(`tokenizer.ggml.token_type has ${this.types.length} entries, tokenizer.ggml.tokens ${this.vocabSize}`);
      }
    } else {
      this.types = new Uint8Array(this.vocabSize).fill(TokenType.NORMAL);
    }
    this.tokens.forEach((t, i) => this.tokenToIdMap.set(t, i)); // a duplicate maps to its last id, as in llama.cpp
    this.bytesCache = new Array(this.vocabSize);

    const merges = meta.getStringArray('tokenizer.ggml.merges');
    merges.forEach((m, rank) => {
      const sp = m.indexOf(' ', 1); // llama.cpp: the first space after the first character
      if (sp < 0 || sp === m.length - 1) throw bad(`tokenizer.ggml.merges[${rank}] '${m}' is not two symbols separated by a space`);
      const a = m.slice(0, sp);
      const b = m.slice(sp + 1);
      let inner = this.ranks.get(a);
      if (inner === undefined) this.ranks.set(a, (inner = new Map()));
      if (!inner.has(b)) inner.set(b, rank); // a repeated merge keeps its first (best) rank
    });

    const id = (key: string): number | undefined => {
      if (!meta.has(key)) return undefined;
      const v = meta.getInt(key);
      // Some converters write -1 (as an unsigned 0xffffffff) for "none".
      if (v === -1 || v === 0xffffffff) return undefined;
      if (!Number.isInteger(v) || v < 0 || v >= this.vocabSize) throw bad(`${key} ${v} is outside the vocabulary (${this.vocabSize} tokens)`);
      return v;
    };
    this.bosId = id('tokenizer.ggml.bos_token_id');
    this.eosId = id('tokenizer.ggml.eos_token_id');
    this.unkId = id('tokenizer.ggml.unknown_token_id');
    this.padId = id('tokenizer.ggml.padding_token_id');
    this.eotId = id('tokenizer.ggml.eot_token_id');
    this.addBos = meta.getBool('tokenizer.ggml.add_bos_token', false);
    this.addEos = meta.getBool('tokenizer.ggml.add_eos_token', false);
    if (this.addBos && this.bosId === undefined) throw bad('tokenizer.ggml.add_bos_token is true but there is no bos_token_id');
    if (this.addEos && this.eosId === undefined) throw bad('tokenizer.ggml.add_eos_token is true but there is no eos_token_id');

    const specials = (pick: (type: number) => boolean): RegExp | null => {
      const texts = new Set<string>();
      for (let i = 0; i < this.vocabSize; i++) if (pick(this.types[i]!) && this.tokens[i]!.length > 0) texts.add(this.tokens[i]!);
      if (texts.size === 0) return null;
      const sorted = [...texts].sort((x, y) => y.length - x.length || (x < y ? -1 : x > y ? 1 : 0));
      return new RegExp(sorted.map(escapeRegex).join('|'), 'gu');
    };
    this.specialAll = specials((t) => t === TokenType.CONTROL || t === TokenType.USER_DEFINED || t === TokenType.UNKNOWN);
    this.specialUser = specials((t) => t === TokenType.USER_DEFINED);
  }

  /** Builds the tokenizer from GGUF metadata (throws KVF_ERR_BAD_MODEL when it is unusable). */
  static fromGguf(meta: GgufMetadata): Tokenizer {
    return new Tokenizer(meta);
  }

  /** Reads a GGUF file's metadata and builds its tokenizer. */
  static async fromFile(path: string): Promise<Tokenizer> {
    return new Tokenizer(await readGgufMetadata(path));
  }

  tokenText(id: number): string {
    this.checkId(id);
    return this.tokens[id]!;
  }

  tokenType(id: number): TokenType {
    this.checkId(id);
    return this.types[id]! as TokenType;
  }

  /** The id of a vocabulary entry given in its stored (byte-mapped) form, e.g. 'Ġthe' or '<|im_end|>'. */
  tokenToId(text: string): number | undefined {
    return this.tokenToIdMap.get(text);
  }

  /** True for control tokens (end of turn, chat markers…), which generation stops on or hides. */
  isControl(id: number): boolean {
    return this.tokenType(id) === TokenType.CONTROL;
  }

  encode(text: string, options: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `encode: text must be a string, got ${typeof text}`);
    const addBos = options.addBos ?? this.addBos;
    const addEos = options.addEos ?? this.addEos;
    const out: number[] = [];
    if (addBos) {
      if (this.bosId === undefined) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'encode: addBos, but the model has no BOS token');
      out.push(this.bosId);
    }
    const ps = options.parseSpecial;
    const special = ps === true || typeof ps === 'function' ? this.specialAll : this.specialUser;
    if (special === null) {
      this.encodeText(text, out);
    } else {
      let last = 0;
      for (const m of text.matchAll(special)) {
        const id = this.tokenToIdMap.get(m[0])!;
        const end = m.index + m[0].length;
        // With a predicate, a control/unknown token it rejects stays text (user-defined ones always match).
        if (typeof ps === 'function' && this.types[id] !== TokenType.USER_DEFINED && !ps(m.index, end)) continue;
        if (m.index > last) this.encodeText(text.slice(last, m.index), out);
        out.push(id);
        last = end;
      }
      if (last < text.length) this.encodeText(text.slice(last), out);
    }
    if (addEos) {
      if (this.eosId === undefined) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'encode: addEos, but the model has no EOS token');
      out.push(this.eosId);
    }
    return out;
  }

  private encodeText(text: string, out: number[]): void {
    for (const piece of splitByRegexes(text, this.regexes)) {
      let ids = this.pieceCache.get(piece);
      if (ids === undefined) {
        ids = this.bpe(piece);
        if (this.pieceCache.size >= WORD_CACHE_LIMIT) this.pieceCache.clear();
        this.pieceCache.set(piece, ids);
      }
      for (const id of ids) out.push(id);
    }
  }

  private bpe(piece: string): number[] {
    const bytes = Buffer.from(piece, 'utf8');
    const n = bytes.length;
    const sym: string[] = new Array(n);
    const prev = new Int32Array(n);
    const next = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      sym[i] = BYTE_TO_CHAR[bytes[i]!]!;
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    const heap = new PairHeap();
    const tryPair = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const rank = this.ranks.get(sym[l]!)?.get(sym[r]!);
      if (rank !== undefined) heap.push(rank, l, r);
    };
    for (let i = 0; i + 1 < n; i++) tryPair(i, i + 1);
    const alive = new Uint8Array(n).fill(1);
    while (heap.size > 0) {
      const [rank, l, r] = heap.pop();
      // Stale entries: a side was merged away, or is no longer the same symbol pair.
      if (!alive[l] || !alive[r] || next[l] !== r) continue;
      if (this.ranks.get(sym[l]!)?.get(sym[r]!) !== rank) continue;
      sym[l] = sym[l]! + sym[r]!;
      alive[r] = 0;
      next[l] = next[r]!;
      if (next[l]! >= 0) prev[next[l]!] = l;
      tryPair(prev[l]!, l);
      tryPair(l, next[l]!);
    }
    const ids: number[] = [];
    for (let i = n > 0 ? 0 : -1; i >= 0; i = next[i]!) {
      const id = this.tokenToIdMap.get(sym[i]!);
      if (id !== undefined) {
        ids.push(id);
        continue;
      }
      // A symbol missing from the vocabulary (SmolLM2 lacks the byte symbols of 0x04, 0x06, 0x13, 0x14,
      // 0x16, 0x1d and of bytes that never occur in UTF-8): llama.cpp looks up its single bytes, which
      // only ASCII characters can match, and drops the rest; Hugging Face (no unk_token) drops it too.
      for (const ch of sym[i]!) {
        const cid = ch.charCodeAt(0) < 0x80 ? this.tokenToIdMap.get(ch) : undefined;
        if (cid !== undefined) ids.push(cid);
      }
    }
    return ids;
  }

  /**
   * The most UTF-8 bytes any one token stands for. A text of n UTF-16 code units has at least n UTF-8 bytes, so
   * it needs at least n / maxTokenBytes tokens: a bound on a prompt's length that costs nothing to check.
   */
  get maxTokenBytes(): number {
    if (this.#maxTokenBytes === undefined) {
      let most = 1;
      for (let id = 0; id < this.vocabSize; id++) most = Math.max(most, this.tokenBytes(id).length);
      this.#maxTokenBytes = most;
    }
    return this.#maxTokenBytes;
  }

  /** The bytes token `id` stands for ('' for control tokens when skipSpecial). */
  tokenBytes(id: number, options: DecodeOptions = {}): Uint8Array {
    this.checkId(id);
    const type = this.types[id]!;
    if (type === TokenType.CONTROL && options.skipSpecial === true) return EMPTY;
    let b = this.bytesCache[id];
    if (b === undefined) {
      const text = this.tokens[id]!;
      switch (type) {
        case TokenType.CONTROL:
        case TokenType.USER_DEFINED:
        case TokenType.UNKNOWN:
          b = Buffer.from(text, 'utf8');
          break;
        case TokenType.NORMAL:
        case TokenType.UNDEFINED: {
          const out: number[] = [];
          for (const ch of text) {
            const byte = CHAR_TO_BYTE.get(ch.codePointAt(0)!);
            if (byte !== undefined) out.push(byte);
            else for (const x of Buffer.from(ch, 'utf8')) out.push(x); // not byte-mapped: keep as is
          }
          b = Uint8Array.from(out);
          break;
        }
        default: // UNUSED, BYTE: suppressed, as llama.cpp does for BPE vocabularies
          b = EMPTY;
      }
      this.bytesCache[id] = b;
    }
    return b;
  }

  /** Text of a token sequence; invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD. */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const parts: Uint8Array[] = [];
    for (let i = 0; i < ids.length; i++) parts.push(this.tokenBytes(ids[i]!, options));
    return new TextDecoder('utf-8', { fatal: false, ignoreBOM: true }).decode(Buffer.concat(parts));
  }

  /** A streaming detokenizer: push token ids as they are generated, get back only complete text. */
  decoder(options: DecodeOptions = {}): StreamingDetokenizer {
    return new StreamingDetokenizer(this, options);
  }

  private checkId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `token id ${id} is outside the vocabulary (${this.vocabSize} tokens)`);
    }
  }
}

const EMPTY = new Uint8Array(0);

export class StreamingDetokenizer {
  private readonly utf8 = new Utf8StreamDecoder();

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly options: DecodeOptions,
  ) {}

  /** Adds one token; returns the text completed by it ('' while a character is still incomplete). */
  push(id: number): string {
    return this.utf8.push(this.tokenizer.tokenBytes(id, this.options));
  }

  /** Ends the stream; an incomplete trailing character comes out as U+FFFD. */
  flush(): string {
    return this.utf8.flush();
  }
}

/** Reads a GGUF file's metadata and builds its tokenizer. */
export function loadTokenizer(path: string): Promise<Tokenizer> {
  return Tokenizer.fromFile(path);
}
