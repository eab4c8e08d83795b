#!/usr/bin/env node
// Writes a tiny, deterministic Llama-architecture model as GGUF v3 for fast engine tests:
// 2 layers, dim 64, 4 heads (2 KV heads), FFN 128, a 300-token byte-level BPE vocabulary trained on a
// fixed text, SmolLM2's ChatML template, and weights from a seeded PRNG stored in a mix of types
// (F32 norms; F16, Q8_0, Q4_0 and Q4_1 matrices) so that the loader and dequantization paths all run.
// The weights are random: the model's output is gibberish, but the same bytes on every run and machine
// (only integer arithmetic, exact float operations and Math.sqrt, which IEEE 754 rounds exactly).
//
// Usage: node scripts/make-tiny-model.mjs [output path] [--layers N] [--dim N] [--ffn N] [--context N]
//        (default: models/tiny-llama.gguf, 2 layers, dim 64, FFN 128, context 256). A larger shape gives
//        tests a model whose generation takes long enough to interrupt mid-stream.
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: shape, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    layers: { type: 'string', default: '2' },
    dim: { type: 'string', default: '64' },
    ffn: { type: 'string', default: '128' },
    context: { type: 'string', default: '256' },
  },
});
const outPath = resolve(positionals[0] ?? join(root, 'models', 'tiny-llama.gguf'));

// ----------------------------------------------------------------------------------------------------
// Hyperparameters

/** A positive integer option that is a multiple of `of` (quantized rows are 32 wide). */
function dimension(name, of) {
  const v = Number(shape[name]);
  if (!Number.isInteger(v) || v <= 0 || v % of !== 0) throw new Error(`--${name} must be a positive multiple of ${of}, got ${shape[name]}`);
  return v;
}
const N_LAYER = dimension('layers', 1);
const DIM = dimension('dim', 64);
const N_HEAD = 4;
const N_HEAD_KV = 2;
const HEAD_DIM = DIM / N_HEAD;
const FFN = dimension('ffn', 32);
const VOCAB = 300;
const CONTEXT = dimension('context', 1);
const ALIGNMENT = 64; // not GGUF's default 32, so that readers honour general.alignment
const SEED = 0x6b7666; // "kvf"

// SmolLM2-Instruct's template (ChatML with a default system prompt), so the tiny model and the real one
// take the same chat path.
const CHAT_TEMPLATE =
  "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" +
  "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}" +
  "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}" +
  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

// ----------------------------------------------------------------------------------------------------
// Tokenizer: GPT-2 style byte-level BPE. Specials first (as in SmolLM2: 0 = <|endoftext|>,
// 1 = <|im_start|> (bos), 2 = <|im_end|> (eos)), then the 256 byte symbols, then one token per merge.

const SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>'];
const TOKEN_NORMAL = 1;
const TOKEN_CONTROL = 3;

const CORPUS = `The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs
into the forest. Key and value caches move between the prefill worker and the decode worker over the
fabric. The decode worker reads the blocks, then it streams the tokens to the client. Hello, world!
What is the capital of France? The capital of France is Paris. There are 3 cats and 12 dogs here.`;

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to code points from 256 up.
function bytesToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const map = new Array(256);
  bs.forEach((b, i) => (map[b] = String.fromCodePoint(cs[i])));
  return map;
}

function trainBpe(text, nMerges) {
  const byteChar = bytesToUnicode();
  const pretokens = text.match(/'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu) ?? [];
  const words = new Map(); // symbol sequence (joined by \u0000) -> frequency
  for (const w of pretokens) {
    const syms = [...Buffer.from(w, 'utf8')].map((b) => byteChar[b]);
    const key = syms.join('\u0000');
    words.set(key, (words.get(key) ?? 0) + 1);
  }
  let seqs = [...words.entries()].map(([k, f]) => ({ syms: k.split('\u0000'), f }));
  const merges = [];
  while (merges.length < nMerges) {
    const counts = new Map();
    for (const { syms, f } of seqs) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const pair = syms[i] + ' ' + syms[i + 1];
        counts.set(pair, (counts.get(pair) ?? 0) + f);
      }
    }
    if (counts.size === 0) throw new Error('corpus too small for the requested number of merges');
    // Most frequent pair; ties broken by code-unit order of the pair string, so the result is fixed.
    let best = null;
    for (const [pair, c] of counts) {
      if (best === null || c > best[1] || (c === best[1] && pair < best[0])) best = [pair, c];
    }
    const [a, b] = best[0].split(' ');
    merges.push(best[0]);
    seqs = seqs.map(({ syms, f }) => {
      const out = [];
      for (let i = 0; i < syms.length; i++) {
        if (i + 1 < syms.length && syms[i] === a && syms[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(syms[i]);
      }
      return { syms: out, f };
    });
  }
  const tokens = [...SPECIALS, ...byteChar, ...merges.map((m) => m.replace(' ', ''))];
  const types = tokens.map((_, i) => (i < SPECIALS.length ? TOKEN_CONTROL : TOKEN_NORMAL));
  return { tokens, types, merges };
}

// ----------------------------------------------------------------------------------------------------
// Numbers: seeded PRNG and float16 / ggml block encoders.

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296; // [0, 1)
  };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

// float -> IEEE half, round to nearest even (from the float32 value, as numpy's float32 -> float16).
function toHalf(x) {
  f32[0] = x;
  const w = u32[0];
  const sign = (w >>> 16) & 0x8000;
  const exp = (w >>> 23) & 0xff;
  let mant = w & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && h & 1)) h++;
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

function halfToFloat(h) {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// C's roundf: halfway cases away from zero (ggml's quantizers use it).
const roundf = (x) => Math.sign(x) * Math.floor(Math.abs(x) + 0.5);

const encoders = {
  F32: { id: 0, block: 1, bytes: 4, encode: (v, buf) => buf.writeFloatLE(v[0], 0) },
  F16: { id: 1, block: 1, bytes: 2, encode: (v, buf) => buf.writeUInt16LE(toHalf(v[0]), 0) },
  // block_q4_0 { half d; uint8 qs[16] }: d = max / -8 (max: the value of largest magnitude), q in 0..15.
  Q4_0: {
    id: 2,
    block: 32,
    bytes: 18,
    encode(v, buf) {
      let max = 0;
      for (const x of v) if (Math.abs(x) > Math.abs(max)) max = x;
      const d = max / -8;
      const id = d ? 1 / d : 0;
      buf.writeUInt16LE(toHalf(d), 0);
      const q = v.map((x) => Math.min(15, Math.trunc(x * id + 8.5)));
      for (let j = 0; j < 16; j++) buf[2 + j] = q[j] | (q[j + 16] << 4);
    },
  },
  // block_q4_1 { half d; half m; uint8 qs[16] }: x = q * d + m, q in 0..15.
  Q4_1: {
    id: 3,
    block: 32,
    bytes: 20,
    encode(v, buf) {
      const min = Math.min(...v);
      const max = Math.max(...v);
      const d = (max - min) / 15;
      const id = d ? 1 / d : 0;
      buf.writeUInt16LE(toHalf(d), 0);
      buf.writeUInt16LE(toHalf(min), 2);
      const q = v.map((x) => Math.min(15, Math.trunc((x - min) * id + 0.5)));
      for (let j = 0; j < 16; j++) buf[4 + j] = q[j] | (q[j + 16] << 4);
    },
  },
  // block_q8_0 { half d; int8 qs[32] }: d = amax / 127.
  Q8_0: {
    id: 8,
    block: 32,
    bytes: 34,
    encode(v, buf) {
      const amax = Math.max(...v.map(Math.abs));
      const d = amax / 127;
      const id = d ? 1 / d : 0;
      buf.writeUInt16LE(toHalf(d), 0);
      for (let j = 0; j < 32; j++) buf.writeInt8(Math.max(-128, Math.min(127, roundf(v[j] * id))), 2 + j);
    },
  },
};

function encodeTensor(values, typeName) {
  const enc = encoders[typeName];
  const nBlocks = values.length / enc.block;
  const out = Buffer.alloc(nBlocks * enc.bytes);
  for (let b = 0; b < nBlocks; b++) {
    enc.encode(values.slice(b * enc.block, (b + 1) * enc.block), out.subarray(b * enc.bytes, (b + 1) * enc.bytes));
  }
  return out;
}

// ----------------------------------------------------------------------------------------------------
// GGUF v3 writer.

const GGUF = { UINT8: 0, INT8: 1, UINT16: 2, INT16: 3, UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9, UINT64: 10 };

class ByteWriter {
  constructor() {
    this.chunks = [];
    this.length = 0;
  }
  push(buf) {
    this.chunks.push(buf);
    this.length += buf.length;
  }
  u32(v) {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v) {
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  u64(v) {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(v));
    this.push(b);
  }
  f32(v) {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.push(b);
  }
  u8(v) {
    this.push(Buffer.from([v]));
  }
  str(s) {
    const b = Buffer.from(s, 'utf8');
    this.u64(b.length);
    this.push(b);
  }
  pad(alignment) {
    const n = (alignment - (this.length % alignment)) % alignment;
    if (n) this.push(Buffer.alloc(n));
  }
}

function writeValue(w, type, v) {
  switch (type) {
    case GGUF.UINT32:
      return w.u32(v);
    case GGUF.INT32:
      return w.i32(v);
    case GGUF.FLOAT32:
      return w.f32(v);
    case GGUF.BOOL:
      return w.u8(v ? 1 : 0);
    case GGUF.STRING:
      return w.str(v);
    default:
      throw new Error(`unsupported metadata type ${type}`);
  }
}

function writeGguf(metadata, tensors) {
  const w = new ByteWriter();
  w.push(Buffer.from('GGUF', 'ascii'));
  w.u32(3);
  w.u64(tensors.length);
  w.u64(metadata.length);
  for (const [key, type, value, elemType] of metadata) {
    w.str(key);
    w.u32(type);
    if (type === GGUF.ARRAY) {
      w.u32(elemType);
      w.u64(value.length);
      for (const e of value) writeValue(w, elemType, e);
    } else writeValue(w, type, value);
  }
  let offset = 0;
  for (const t of tensors) {
    t.offset = offset;
    offset += Math.ceil(t.data.length / ALIGNMENT) * ALIGNMENT;
    w.str(t.name);
    w.u32(t.shape.length);
    for (const d of t.shape) w.u64(d);
    w.u32(encoders[t.type].id);
    w.u64(t.offset);
  }
  w.pad(ALIGNMENT);
  for (const t of tensors) {
    w.push(t.data);
    w.pad(ALIGNMENT);
  }
  return Buffer.concat(w.chunks);
}

// ----------------------------------------------------------------------------------------------------
// The model.

const rand = mulberry32(SEED);
const uniform = (n, scale) => Array.from({ length: n }, () => Math.fround((rand() * 2 - 1) * scale));

const tensors = [];
// shape is ggml order: [row length (ne0), rows (ne1)]; a Linear(in -> out) weight is [in, out].
function addTensor(name, shape, type, values) {
  tensors.push({ name, shape, type, data: encodeTensor(values, type) });
}
function addMatrix(name, nIn, nOut, type) {
  // Uniform with standard deviation 1/sqrt(nIn), so activations stay O(1) through the layers.
  addTensor(name, [nIn, nOut], type, uniform(nIn * nOut, Math.sqrt(3 / nIn)));
}
function addNorm(name) {
  addTensor(
    name,
    [DIM],
    'F32',
    uniform(DIM, 0.1).map((x) => Math.fround(1 + x)),
  );
}

const KV_DIM = N_HEAD_KV * HEAD_DIM;
const layerTypes = [
  { attn: 'Q8_0', gateUp: 'Q4_0', down: 'Q4_0' },
  { attn: 'Q4_1', gateUp: 'F16', down: 'Q8_0' },
];

addTensor('token_embd.weight', [DIM, VOCAB], 'F16', uniform(DIM * VOCAB, 1));
for (let l = 0; l < N_LAYER; l++) {
  const t = layerTypes[l % layerTypes.length];
  addNorm(`blk.${l}.attn_norm.weight`);
  addMatrix(`blk.${l}.attn_q.weight`, DIM, DIM, t.attn);
  addMatrix(`blk.${l}.attn_k.weight`, DIM, KV_DIM, t.attn);
  addMatrix(`blk.${l}.attn_v.weight`, DIM, KV_DIM, t.attn);
  addMatrix(`blk.${l}.attn_output.weight`, DIM, DIM, t.attn);
  addNorm(`blk.${l}.ffn_norm.weight`);
  addMatrix(`blk.${l}.ffn_gate.weight`, DIM, FFN, t.gateUp);
  addMatrix(`blk.${l}.ffn_up.weight`, DIM, FFN, t.gateUp);
  addMatrix(`blk.${l}.ffn_down.weight`, FFN, DIM, t.down);
}
addNorm('output_norm.weight');
addMatrix('output.weight', DIM, VOCAB, 'Q8_0');

const { tokens, types, merges } = trainBpe(CORPUS, VOCAB - SPECIALS.length - 256);

const metadata = [
  ['general.architecture', GGUF.STRING, 'llama'],
  ['general.type', GGUF.STRING, 'model'],
  ['general.name', GGUF.STRING, 'kvfabric tiny llama (random weights)'],
  ['general.alignment', GGUF.UINT32, ALIGNMENT],
  ['llama.block_count', GGUF.UINT32, N_LAYER],
  ['llama.context_length', GGUF.UINT32, CONTEXT],
  ['llama.embedding_length', GGUF.UINT32, DIM],
  ['llama.feed_forward_length', GGUF.UINT32, FFN],
  ['llama.attention.head_count', GGUF.UINT32, N_HEAD],
  ['llama.attention.head_count_kv', GGUF.UINT32, N_HEAD_KV],
  ['llama.rope.freq_base', GGUF.FLOAT32, 10000],
  ['llama.attention.layer_norm_rms_epsilon', GGUF.FLOAT32, 1e-5],
  ['llama.vocab_size', GGUF.UINT32, VOCAB],
  ['llama.rope.dimension_count', GGUF.UINT32, HEAD_DIM],
  ['tokenizer.ggml.add_space_prefix', GGUF.BOOL, false],
  ['tokenizer.ggml.add_bos_token', GGUF.BOOL, false],
  ['tokenizer.ggml.model', GGUF.STRING, 'gpt2'],
  ['tokenizer.ggml.pre', GGUF.STRING, 'smollm'],
  ['tokenizer.ggml.tokens', GGUF.ARRAY, tokens, GGUF.STRING],
  ['tokenizer.ggml.token_type', GGUF.ARRAY, types, GGUF.INT32],
  ['tokenizer.ggml.merges', GGUF.ARRAY, merges, GGUF.STRING],
  ['tokenizer.ggml.bos_token_id', GGUF.UINT32, 1],
  ['tokenizer.ggml.eos_token_id', GGUF.UINT32, 2],
  ['tokenizer.ggml.unknown_token_id', GGUF.UINT32, 0],
  ['tokenizer.ggml.padding_token_id', GGUF.UINT32, 2],
  ['tokenizer.chat_template', GGUF.STRING, CHAT_TEMPLATE],
  ['general.quantization_version', GGUF.UINT32, 2],
];

if (tokens.length !== VOCAB) throw new Error(`vocabulary has ${tokens.length} tokens, expected ${VOCAB}`);
// The float16 encoder has no other test: check it round-trips within half a unit in the last place.
for (const x of [0, 1, -2.5, 65504, 1e-7, 6.1e-5, 0.1, -3.3e-3]) {
  const back = halfToFloat(toHalf(x));
  if (Math.abs(back - x) > Math.abs(x) * 2 ** -11 + 2 ** -25) throw new Error(`float16 encoder broken for ${x}`);
}
const bytes = writeGguf(metadata, tensors);
mkdirSync(dirname(outPath), { recursive: true });
const tmp = `${outPath}.tmp-${process.pid}`;
writeFileSync(tmp, bytes);
renameSync(tmp, outPath); // readers never see a half-written model
console.log(outPath);
