// Chat prompt rendering for models whose tokenizer.chat_template is a plain per-message loop, the
// shape of ChatML templates such as SmolLM2-Instruct's:
//
//   {% for message in messages %}
//     {% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n…default…<|im_end|>\n' }}{% endif %}
//     {{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}
//   {% endfor %}
//   {% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}
//
// (without the line breaks and indentation, which in Jinja would be output). This is not a Jinja engine:
// the template is split into its tags and matched against that structure (the default-system block is
// optional; the per-message and generation-prompt expressions may be any `+` concatenation of string
// literals, message['role'] and message['content']), and rendered from what was matched. Any other
// template is refused with KVF_ERR_BAD_MODEL, never rendered approximately.
import { KvfError } from '../common/errors.js';
import type { GgufMetadata } from './gguf-metadata.js';
import type { Tokenizer } from './tokenizer.js';

export interface ChatMessage {
  role: string;
  content: string;
}

export interface ChatRenderOptions {
  /** Append the assistant header so the model writes the next turn (default true). */
  addGenerationPrompt?: boolean;
}

export interface ChatEncodeOptions extends ChatRenderOptions {
  /** Prepend BOS (default: the tokenizer's add_bos_token). */
  addBos?: boolean;
  /**
   * Parse control-token strings inside message content as control tokens (default false: a user who
   * types "<|im_end|>" gets those characters, not an end of turn). The template's own markers are
   * always parsed. llama.cpp's server parses the whole prompt, i.e. behaves as `true`.
   */
  parseSpecialInContent?: boolean;
}

/** A piece of rendered prompt: template text (trusted) or text that came from a message. */
export interface ChatSegment {
  text: string;
  fromMessage: boolean;
}

type Term = { kind: 'literal'; text: string } | { kind: 'role' } | { kind: 'content' };

export class ChatTemplate {
  private constructor(
    /** The template source as stored in the model. */
    readonly source: string,
    /** 'chatml' when the markers are <|im_start|> / <|im_end|>, else 'per-message'. */
    readonly kind: 'chatml' | 'per-message',
    /** Emitted before the first message when it is not a system message ('' if the template has none). */
    readonly defaultSystem: string,
    private readonly perMessage: readonly Term[],
    private readonly generationPrompt: string,
  ) {}

  /** The model's tokenizer.chat_template (KVF_ERR_BAD_MODEL when absent or unsupported). */
  static fromGguf(meta: GgufMetadata): ChatTemplate {
    if (!meta.has('tokenizer.chat_template')) {
      throw new KvfError('KVF_ERR_BAD_MODEL', `${meta.source}: the model has no tokenizer.chat_template`);
    }
    return ChatTemplate.parse(meta.getString('tokenizer.chat_template'), meta.source);
  }

  /** Recognizes a template source (KVF_ERR_BAD_MODEL naming what did not match when unsupported). */
  static parse(source: string, origin = 'chat template'): ChatTemplate {
    const fail = (why: string): never => {
      throw new KvfError(
        'KVF_ERR_BAD_MODEL',
        `${origin}: unsupported tokenizer.chat_template (${why}); only per-message loop templates such as ChatML are supported`,
      );
    };
    const tags = splitTags(source, fail);
    let i = 0;
    const next = (): Tag | undefined => tags[i++];
    const expectBlock = (want: string, what: string): void => {
      const t = next();
      if (t?.kind !== 'block' || t.norm !== want) fail(`expected {% ${what} %}, found ${describe(t)}`);
    };
    const expectOutput = (what: string): Term[] => {
      const t = next();
      if (t?.kind !== 'output') return fail(`expected {{ ${what} }}, found ${describe(t)}`);
      return parseConcat(t.body, fail);
    };

    expectBlock('formessageinmessages', 'for message in messages');
    let defaultSystem = '';
    const peek = tags[i];
    if (peek?.kind === 'block' && peek.norm.startsWith('if')) {
      if (!SYSTEM_CONDITIONS.has(peek.norm)) fail(`unknown condition {%${peek.body}%} in the message loop`);
      i++;
      const terms = expectOutput('default system message');
      defaultSystem = literalOnly(terms, 'the default system message', fail);
      expectBlock('endif', 'endif');
    }
    const perMessage = expectOutput("'<|im_start|>' + message['role'] + ... + message['content'] + ...");
    if (perMessage.filter((t) => t.kind === 'content').length !== 1) fail("the message expression must use message['content'] once");
    expectBlock('endfor', 'endfor');
    let generationPrompt = '';
    if (i < tags.length) {
      expectBlock('ifadd_generation_prompt', 'if add_generation_prompt');
      generationPrompt = literalOnly(expectOutput("'<|im_start|>assistant\\n'"), 'the generation prompt', fail);
      expectBlock('endif', 'endif');
    }
    if (i < tags.length) fail(`unexpected ${describe(tags[i])} after the end of the template`);
    const literals = [defaultSystem, generationPrompt, ...perMessage.map((t) => (t.kind === 'literal' ? t.text : ''))].join('');
    const kind = literals.includes('<|im_start|>') && literals.includes('<|im_end|>') ? 'chatml' : 'per-message';
    return new ChatTemplate(source, kind, defaultSystem, perMessage, generationPrompt);
  }

  /** The prompt as segments, so that callers can tell template text from message text. */
  renderSegments(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): ChatSegment[] {
    checkMessages(messages);
    const out: ChatSegment[] = [];
    const lit = (text: string): void => {
      if (text.length > 0) out.push({ text, fromMessage: false });
    };
    messages.forEach((m, idx) => {
      if (idx === 0 && messages[0]!.role !== 'system') lit(this.defaultSystem);
      for (const t of this.perMessage) {
        if (t.kind === 'literal') lit(t.text);
        else {
          const text = t.kind === 'role' ? m.role : m.content;
          if (text.length > 0) out.push({ text, fromMessage: true });
        }
      }
    });
    if (options.addGenerationPrompt ?? true) lit(this.generationPrompt);
    return out;
  }

  /** The prompt text, exactly as the Jinja template renders it. */
  render(messages: readonly ChatMessage[], options: ChatRenderOptions = {}): string {
    return this.renderSegments(messages, options)
      .map((s) => s.text)
      .join('');
  }

  /**
   * Token ids of the rendered prompt: the whole text is tokenized at once (as llama.cpp does), with
   * control tokens parsed in the template's text and, unless parseSpecialInContent, not in messages.
   */
  encode(tokenizer: Tokenizer, messages: readonly ChatMessage[], options: ChatEncodeOptions = {}): number[] {
    const segments = this.renderSegments(messages, options);
    const text = segments.map((s) => s.text).join('');
    const encodeOptions = options.addBos === undefined ? {} : { addBos: options.addBos };
    if (options.parseSpecialInContent === true) return tokenizer.encode(text, { ...encodeOptions, parseSpecial: true });
    const trusted: Array<[number, number]> = [];
    let pos = 0;
    for (const s of segments) {
      if (!s.fromMessage) trusted.push([pos, pos + s.text.length]);
      pos += s.text.length;
    }
    // A control token counts only when it lies wholly inside one piece of template text.
    const inTemplate = (start: number, end: number): boolean => trusted.some(([a, b]) => start >= a && end <= b);
    return tokenizer.encode(text, { ...encodeOptions, parseSpecial: inTemplate });
  }
}

// ----------------------------------------------------------------------------------------------------

/** Conditions (whitespace removed, quotes as ') that guard the default system message. */
const SYSTEM_CONDITIONS = new Set([
  "ifloop.firstandmessages[0]['role']!='system'",
  "ifloop.index0==0andmessages[0]['role']!='system'",
  "ifloop.firstandnotmessages[0]['role']=='system'",
]);

interface Tag {
  kind: 'block' | 'output';
  /** Inside the delimiters. */
  body: string;
  /** body without whitespace outside string literals, with " quotes turned to ' and .role/.content to ['role']. */
  norm: string;
}

function describe(t: Tag | undefined): string {
  if (t === undefined) return 'the end of the template';
  return t.kind === 'block' ? `{%${t.body}%}` : `{{${t.body}}}`;
}

/**
 * Splits a template into its {% %} and {{ }} tags. Text between tags must be empty after Hugging Face's
 * trim_blocks (first newline after a block tag) and lstrip_blocks (blanks before a block tag) are applied;
 * comments ({# #}) and whitespace control (-) are not supported.
 */
function splitTags(src: string, fail: (why: string) => never): Tag[] {
  const tags: Tag[] = [];
  let pos = 0;
  let afterBlock = false;
  while (pos < src.length) {
    const open = src.slice(pos).search(/\{[{%#]/);
    const textEnd = open < 0 ? src.length : pos + open;
    let text = src.slice(pos, textEnd);
    if (afterBlock && text.startsWith('\n')) text = text.slice(1);
    if (open >= 0 && src[textEnd + 1] === '%') text = text.replace(/(^|\n)[ \t]+$/, '$1');
    if (open < 0 && text.trim() === '') text = ''; // trailing whitespace at the very end
    if (text.length > 0) fail(`literal text ${JSON.stringify(text.slice(0, 40))} between tags`);
    if (open < 0) break;
    const kindChar = src[textEnd + 1]!;
    if (kindChar === '#') fail('template comments');
    const close = kindChar === '%' ? '%}' : '}}';
    const end = findClose(src, textEnd + 2, close);
    if (end < 0) fail(`unterminated ${src.slice(textEnd, textEnd + 2)} at offset ${textEnd}`);
    const body = src.slice(textEnd + 2, end);
    if (body.startsWith('-') || body.endsWith('-') || body.startsWith('+') || body.endsWith('+')) fail('whitespace control (-/+) in tags');
    tags.push({ kind: kindChar === '%' ? 'block' : 'output', body, norm: normalize(body) });
    afterBlock = kindChar === '%';
    pos = end + 2;
  }
  return tags;
}

/** Index of `close` at or after `from`, skipping string literals; -1 if none. */
function findClose(src: string, from: number, close: string): number {
  let quote: string | null = null;
  for (let i = from; i < src.length; i++) {
    const c = src[i]!;
    if (quote !== null) {
      if (c === '\\') i++;
      else if (c === quote) quote = null;
    } else if (c === "'" || c === '"') quote = c;
    else if (src.startsWith(close, i)) return i;
  }
  return -1;
}

function normalize(body: string): string {
  let out = '';
  let quote: string | null = null;
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (quote !== null) {
      if (c === '\\') {
        out += c + (body[i + 1] ?? '');
        i++;
      } else if (c === quote) {
        out += "'";
        quote = null;
      } else out += c;
    } else if (c === "'" || c === '"') {
      quote = c;
      out += "'";
    } else if (!/\s/.test(c)) out += c;
  }
  return out.replace(/\.(role|content)\b/g, "['$1']");
}

/** Parses `term (+ term)*` where a term is a string literal, message['role'] or message['content']. */
function parseConcat(body: string, fail: (why: string) => never): Term[] {
  const terms: Term[] = [];
  let i = 0;
  const skip = (): void => {
    while (i < body.length && /\s/.test(body[i]!)) i++;
  };
  for (;;) {
    skip();
    const c = body[i];
    if (c === "'" || c === '"') {
      const { text, end } = readLiteral(body, i, fail);
      terms.push({ kind: 'literal', text });
      i = end;
    } else {
      const m = /^message(?:\[\s*(['"])(role|content)\1\s*\]|\.(role|content)\b)/.exec(body.slice(i));
      if (m === null) fail(`unsupported expression {{${body}}}`);
      terms.push({ kind: (m![2] ?? m![3]) === 'role' ? 'role' : 'content' });
      i += m![0].length;
    }
    skip();
    if (i >= body.length) return terms;
    if (body[i] !== '+') fail(`unsupported expression {{${body}}}`);
    i++;
  }
}

/** A Jinja (Python-style) string literal starting at `start`; returns its value and the index after it. */
function readLiteral(s: string, start: number, fail: (why: string) => never): { text: string; end: number } {
  const quote = s[start]!;
  let out = '';
  for (let i = start + 1; i < s.length; i++) {
    const c = s[i]!;
    if (c === quote) return { text: out, end: i + 1 };
    if (c !== '\\') {
      out += c;
      continue;
    }
    const e = s[++i];
    switch (e) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case '\\':
        out += '\\';
        break;
      case "'":
        out += "'";
        break;
      case '"':
        out += '"';
        break;
      default:
        fail(`unsupported escape \\${e ?? ''} in a string literal`);
    }
  }
  return fail('unterminated string literal');
}

function literalOnly(terms: Term[], what: string, fail: (why: string) => never): string {
  if (terms.some((t) => t.kind !== 'literal')) fail(`${what} must be string literals only`);
  return terms.map((t) => (t.kind === 'literal' ? t.text : '')).join('');
}

function checkMessages(messages: readonly ChatMessage[]): void {
  if (!Array.isArray(messages)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'chat: messages must be an array');
  messages.forEach((m, i) => {
    if (typeof m !== 'object' || m === null || typeof m.role !== 'string' || typeof m.content !== 'string') {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `chat: messages[${i}] must be { role: string, content: string }`);
    }
  });
}
