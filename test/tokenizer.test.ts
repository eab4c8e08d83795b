// Tokenizer, GGUF metadata reader and chat template (src/engine/).
//
// Oracle: test/fixtures/tokenizer/smollm2.json holds token ids from Hugging Face `tokenizers` (Rust)
// built from the same GGUF vocabulary, and chat prompts rendered by jinja2 from the model's own template
// (benchmarks/crosscheck/tokenizer_oracle.py writes it). The real-model cases need
// SmolLM2-135M-Instruct.Q4_1.gguf in $KVF_MODEL_CACHE or ~/.cache/kvfabric/models (npm run fetch-model) and are skipped
// without it; the tiny-model cases always run (on a model generated into a temp folder).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { KvfError } from '../src/common/errors.js';
import type { ErrorCode } from '../src/common/error-registry.js';
import { ChatTemplate, type ChatMessage } from '../src/engine/chat-template.js';
import { GgufMetadata, GgufType, parseGgufMetadata, readGgufMetadata } from '../src/engine/gguf-metadata.js';
import { Tokenizer, TokenType } from '../src/engine/tokenizer.js';
import { Utf8StreamDecoder } from '../src/engine/utf8-stream.js';
import { HAVE_SMOLLM2, SMOLLM2 } from './helpers/models.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const REAL_MODEL = SMOLLM2;
const HAVE_REAL = HAVE_SMOLLM2;
const REGENERATE = 'regenerate it with benchmarks/crosscheck/tokenizer_oracle.py --tiny';

interface OracleCase {
  text: string;
  ids: number[];
  idsParseSpecial: number[];
  roundTrips: boolean;
}
interface OracleChat {
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  text: string;
  ids: number[];
}
interface OracleModel {
  file: string;
  pre: string;
  vocabSize: number;
  fingerprint: string;
  chats: OracleChat[];
  cases: OracleCase[];
}
const fixture = JSON.parse(readFileSync(join(root, 'test/fixtures/tokenizer/smollm2.json'), 'utf8')) as {
  real: OracleModel;
  tiny: OracleModel;
};

function expectCode(fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof KvfError)) assert.fail(`expected KvfError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message !== undefined) assert.match(err.message, message);
    return;
  }
  assert.fail(`expected ${code}, but nothing was thrown`);
}

async function expectCodeAsync(fn: () => Promise<unknown>, code: ErrorCode, message?: RegExp): Promise<void> {
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof KvfError)) assert.fail(`expected KvfError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (message !== undefined) assert.match(err.message, message);
    return;
  }
  assert.fail(`expected ${code}, but nothing was thrown`);
}

/** The oracle's vocabulary fingerprint (see fingerprint() in tokenizer_oracle.py). */
function fingerprint(meta: GgufMetadata): string {
  const tokens = meta.getStringArray('tokenizer.ggml.tokens');
  const merges = meta.getStringArray('tokenizer.ggml.merges');
  const types = Array.from(meta.getIntArray('tokenizer.ggml.token_type'));
  const text = tokens.join('\u0000') + '\u0001' + merges.join('\u0000') + '\u0001' + types.join(',');
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

// ----------------------------------------------------------------------------------------------------
// A GGUF writer for hand-made files (every value type, and malformed variants).

type Kv = [key: string, type: GgufType, value: unknown, elementType?: GgufType];

function ggufBytes(kvs: Kv[], opts: { version?: number; tensorCount?: bigint; kvCount?: bigint } = {}): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number): void => void parts.push(Buffer.from(new Uint32Array([v]).buffer));
  const u64 = (v: bigint): void => void parts.push(Buffer.from(new BigUint64Array([v]).buffer));
  const str = (s: string): void => {
    const b = Buffer.from(s, 'utf8');
    u64(BigInt(b.length));
    parts.push(b);
  };
  const scalar = (type: GgufType, v: unknown): void => {
    const b = Buffer.alloc(8);
    switch (type) {
      case GgufType.UINT8:
        b.writeUInt8(v as number);
        return void parts.push(b.subarray(0, 1));
      case GgufType.INT8:
        b.writeInt8(v as number);
        return void parts.push(b.subarray(0, 1));
      case GgufType.UINT16:
        b.writeUInt16LE(v as number);
        return void parts.push(b.subarray(0, 2));
      case GgufType.INT16:
        b.writeInt16LE(v as number);
        return void parts.push(b.subarray(0, 2));
      case GgufType.UINT32:
        b.writeUInt32LE(v as number);
        return void parts.push(b.subarray(0, 4));
      case GgufType.INT32:
        b.writeInt32LE(v as number);
        return void parts.push(b.subarray(0, 4));
      case GgufType.FLOAT32:
        b.writeFloatLE(v as number);
        return void parts.push(b.subarray(0, 4));
      case GgufType.BOOL:
        b.writeUInt8(v ? 1 : 0);
        return void parts.push(b.subarray(0, 1));
      case GgufType.UINT64:
        b.writeBigUInt64LE(v as bigint);
        return void parts.push(b);
      case GgufType.INT64:
        b.writeBigInt64LE(v as bigint);
        return void parts.push(b);
      case GgufType.FLOAT64:
        b.writeDoubleLE(v as number);
        return void parts.push(b);
      case GgufType.STRING:
        return str(v as string);
      default:
        return; // an unknown type: no value bytes (malformed-file tests)
    }
  };
  const value = (type: GgufType, v: unknown, elementType?: GgufType): void => {
    if (type !== GgufType.ARRAY) return scalar(type, v);
    const [et, items] = elementType === GgufType.ARRAY ? [GgufType.ARRAY, v as Kv[]] : [elementType!, v as unknown[]];
    u32(et);
    u64(BigInt(items.length));
    for (const item of items) {
      if (et === GgufType.ARRAY) {
        const [, , inner, innerType] = item as Kv;
        value(GgufType.ARRAY, inner, innerType);
      } else scalar(et, item);
    }
  };
  parts.push(Buffer.from('GGUF', 'ascii'));
  u32(opts.version ?? 3);
  u64(opts.tensorCount ?? 0n);
  u64(opts.kvCount ?? BigInt(kvs.length));
  for (const [key, type, v, et] of kvs) {
    str(key);
    u32(type);
    value(type, v, et);
  }
  return Buffer.concat(parts);
}

const ALL_TYPES: Kv[] = [
  ['u8', GgufType.UINT8, 250],
  ['i8', GgufType.INT8, -100],
  ['u16', GgufType.UINT16, 65000],
  ['i16', GgufType.INT16, -32000],
  ['u32', GgufType.UINT32, 4_000_000_000],
  ['i32', GgufType.INT32, -2_000_000_000],
  ['f32', GgufType.FLOAT32, 1.5],
  ['bool', GgufType.BOOL, true],
  ['str', GgufType.STRING, 'héllo 🤗'],
  ['u64', GgufType.UINT64, 2n ** 63n + 5n],
  ['i64', GgufType.INT64, -(2n ** 62n)],
  ['f64', GgufType.FLOAT64, Math.PI],
  ['arr.str', GgufType.ARRAY, ['a', '', 'ü'], GgufType.STRING],
  ['arr.i32', GgufType.ARRAY, [1, -2, 3], GgufType.INT32],
  ['arr.f32', GgufType.ARRAY, [0.5, -0.25], GgufType.FLOAT32],
  ['arr.u8', GgufType.ARRAY, [1, 2, 255], GgufType.UINT8],
  ['arr.bool', GgufType.ARRAY, [true, false], GgufType.BOOL],
  ['arr.u64', GgufType.ARRAY, [1n, 2n ** 64n - 1n], GgufType.UINT64],
  ['arr.f64', GgufType.ARRAY, [1e300], GgufType.FLOAT64],
  ['arr.empty', GgufType.ARRAY, [], GgufType.INT16],
  [
    'arr.nested',
    GgufType.ARRAY,
    [
      ['', GgufType.ARRAY, [7, 8], GgufType.UINT16],
      ['', GgufType.ARRAY, ['x'], GgufType.STRING],
    ],
    GgufType.ARRAY,
  ],
];

// ----------------------------------------------------------------------------------------------------

let tmp = '';
let tinyPath = '';
let tiny: Tokenizer;
let tinyMeta: GgufMetadata;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'kvf-tokenizer-'));
  tinyPath = join(tmp, 'tiny.gguf');
  execFileSync(process.execPath, [join(root, 'scripts/make-tiny-model.mjs'), tinyPath], { stdio: 'ignore' });
  tinyMeta = await readGgufMetadata(tinyPath);
  tiny = Tokenizer.fromGguf(tinyMeta);
});
after(() => rmSync(tmp, { recursive: true, force: true }));

describe('gguf metadata', () => {
  test('reads every value type', () => {
    const meta = parseGgufMetadata(ggufBytes(ALL_TYPES, { tensorCount: 0n }));
    assert.equal(meta.version, 3);
    assert.equal(meta.entries.size, ALL_TYPES.length);
    assert.deepEqual(meta.get('u8'), { type: GgufType.UINT8, value: 250 });
    assert.equal(meta.getInt('i8'), -100);
    assert.equal(meta.getInt('u16'), 65000);
    assert.equal(meta.getInt('i16'), -32000);
    assert.equal(meta.getInt('u32'), 4_000_000_000);
    assert.equal(meta.getInt('i32'), -2_000_000_000);
    assert.equal(meta.getFloat('f32'), 1.5);
    assert.equal(meta.getBool('bool'), true);
    assert.equal(meta.getString('str'), 'héllo 🤗');
    assert.deepEqual(meta.get('u64'), { type: GgufType.UINT64, value: 2n ** 63n + 5n });
    expectCode(() => meta.getInt('u64'), 'KVF_ERR_BAD_MODEL', /fit in a double/);
    assert.deepEqual(meta.get('i64'), { type: GgufType.INT64, value: -(2n ** 62n) });
    assert.equal(meta.getFloat('f64'), Math.PI);
    assert.deepEqual(meta.getStringArray('arr.str'), ['a', '', 'ü']);
    assert.deepEqual(Array.from(meta.getIntArray('arr.i32')), [1, -2, 3]);
    assert.ok(meta.getIntArray('arr.i32') instanceof Int32Array);
    assert.deepEqual(meta.get('arr.f32'), { type: GgufType.ARRAY, elementType: GgufType.FLOAT32, value: new Float32Array([0.5, -0.25]) });
    assert.deepEqual(Array.from(meta.getIntArray('arr.u8')), [1, 2, 255]);
    assert.deepEqual(meta.get('arr.bool'), { type: GgufType.ARRAY, elementType: GgufType.BOOL, value: [true, false] });
    assert.deepEqual(meta.get('arr.u64'), { type: GgufType.ARRAY, elementType: GgufType.UINT64, value: new BigUint64Array([1n, 2n ** 64n - 1n]) });
    assert.deepEqual(meta.get('arr.f64'), { type: GgufType.ARRAY, elementType: GgufType.FLOAT64, value: new Float64Array([1e300]) });
    assert.equal(meta.getIntArray('arr.empty').length, 0);
    const nested = meta.get('arr.nested');
    assert.ok(nested?.type === GgufType.ARRAY && nested.elementType === GgufType.ARRAY);
    assert.deepEqual(Array.from(nested.value[0]!.value as Uint16Array), [7, 8]);
    assert.deepEqual(nested.value[1]!.value, ['x']);
    // Typed getters name the key and the type they found.
    expectCode(() => meta.getString('u8'), 'KVF_ERR_BAD_MODEL', /'u8' must be a string, got UINT8/);
    expectCode(() => meta.getStringArray('arr.i32'), 'KVF_ERR_BAD_MODEL', /ARRAY of INT32/);
    expectCode(() => meta.getInt('missing'), 'KVF_ERR_BAD_MODEL', /'missing' must be an integer, got missing/);
    assert.equal(meta.getInt('missing', 7), 7);
    assert.equal(parseGgufMetadata(ggufBytes([], { version: 2 })).version, 2);
  });

  test('reads from files incrementally (metadata larger than the first read)', async () => {
    const big = 'x'.repeat(5 << 20); // past the 4 MiB first read
    const bytes = Buffer.concat([ggufBytes([['big', GgufType.STRING, big], ...ALL_TYPES]), Buffer.alloc(1000)]);
    const path = join(tmp, 'big.gguf');
    writeFileSync(path, bytes);
    const meta = await readGgufMetadata(path);
    assert.equal(meta.getString('big').length, big.length);
    assert.equal(meta.getString('str'), 'héllo 🤗');
    assert.equal(meta.tensorInfoOffset, bytes.length - 1000);
    assert.equal(meta.source, path);
  });

  test('tiny model metadata', () => {
    assert.equal(tinyMeta.version, 3);
    assert.equal(tinyMeta.getString('general.architecture'), 'llama');
    assert.equal(tinyMeta.getInt('general.alignment'), 64);
    assert.equal(tinyMeta.getStringArray('tokenizer.ggml.tokens').length, 300);
    assert.ok(tinyMeta.tensorCount > 0);
  });

  test('real model metadata', { skip: HAVE_REAL ? false : `no ${REAL_MODEL} (npm run fetch-model)` }, async () => {
    const meta = await readGgufMetadata(REAL_MODEL);
    assert.equal(meta.version, 3);
    assert.equal(meta.tensorCount, 272);
    assert.equal(meta.entries.size, 33);
    assert.equal(meta.getString('tokenizer.ggml.pre'), 'smollm');
    assert.equal(meta.getStringArray('tokenizer.ggml.tokens').length, 49152);
    assert.equal(meta.getIntArray('tokenizer.ggml.token_type').length, 49152);
    assert.equal(meta.getStringArray('tokenizer.ggml.merges').length, 48900);
    assert.equal(meta.getInt('llama.block_count'), 30);
  });

  test('malformed headers are KVF_ERR_BAD_MODEL with precise messages', async () => {
    const good = ggufBytes(ALL_TYPES);
    const bad = (bytes: Uint8Array, message: RegExp): void => expectCode(() => parseGgufMetadata(bytes), 'KVF_ERR_BAD_MODEL', message);
    bad(Buffer.from('GG'), /too short for the magic/);
    bad(Buffer.from('GGML\u0003\0\0\0'), /not a GGUF file: magic is 47 47 4d 4c/);
    bad(ggufBytes([], { version: 1 }), /version 1 is not supported/);
    bad(ggufBytes([], { version: 4 }), /unsupported GGUF version 4/);
    bad(good.subarray(0, 10), /truncated: tensor count needs 8 bytes, only 2 left/);
    bad(ggufBytes([], { tensorCount: 2n ** 60n }), /tensor count \d+ is larger than/);
    bad(ggufBytes([], { kvCount: 2n ** 64n - 1n }), /metadata key\/value count 18446744073709551615 is larger than/);
    bad(
      ggufBytes([['a', GgufType.UINT8, 1]], { kvCount: 2n }),
      /metadata key\/value count 2 is larger than the 1 the rest of the file can hold \(at byte 16\)/,
    );
    const cut = ggufBytes([['abcdef', GgufType.STRING, 'x'.repeat(100)]]);
    bad(cut.subarray(0, cut.length - 50), /value of 'abcdef' length 100 is larger than the 50 the rest of the file can hold \(at byte 42\)/);
    bad(ggufBytes([['k', 13 as GgufType, 0]]), /'k' has unknown value type 13/);
    bad(ggufBytes([['', GgufType.UINT8, 1]]), /key of metadata entry 0 is empty/);
    bad(ggufBytes([['k'.repeat(70_000), GgufType.UINT8, 1]]), /key of metadata entry 0 length 70000 exceeds the limit of 65536 bytes \(at byte 24\)/);
    bad(
      ggufBytes([
        ['dup', GgufType.UINT8, 1],
        ['dup', GgufType.UINT8, 2],
      ]),
      /duplicate metadata key 'dup'/,
    );
    // A string whose length runs past the end of the file.
    const longStr = ggufBytes([['s', GgufType.STRING, 'abc']]);
    longStr.writeBigUInt64LE(1000n, longStr.length - 3 - 8);
    bad(longStr, /value of 's' length 1000 is larger than the 3 the rest of the file can hold/);
    // An array whose count could not fit in the file.
    const bigArr = ggufBytes([['a', GgufType.ARRAY, [1, 2], GgufType.INT32]]);
    bigArr.writeBigUInt64LE(2n ** 40n, bigArr.length - 8 - 8);
    bad(bigArr, /value of 'a' element count 1099511627776 is larger than/);
    const badElem = ggufBytes([['a', GgufType.ARRAY, [], GgufType.INT32]]);
    badElem.writeUInt32LE(99, badElem.length - 12);
    bad(badElem, /'a' has unknown array element type 99/);
    const badBool = ggufBytes([['b', GgufType.BOOL, true]]);
    badBool[badBool.length - 1] = 2;
    bad(badBool, /value of 'b': bool byte is 2/);
    const badUtf8 = ggufBytes([['k\u00ff', GgufType.UINT8, 1]]);
    badUtf8[badUtf8.length - 1 - 4 - 1] = 0xc3; // 'ÿ' = c3 bf -> c3 c3: invalid
    bad(badUtf8, /key of metadata entry 0 is not valid UTF-8/);
    let nest: Kv = ['', GgufType.ARRAY, [1], GgufType.UINT8];
    for (let i = 0; i < 6; i++) nest = ['', GgufType.ARRAY, [nest], GgufType.ARRAY];
    bad(ggufBytes([['deep', GgufType.ARRAY, nest[2], GgufType.ARRAY]]), /nested deeper than/);
    // Every truncation of a valid file fails cleanly with a KvfError, never a RangeError.
    for (let n = 0; n < good.length; n++) expectCode(() => parseGgufMetadata(good.subarray(0, n)), 'KVF_ERR_BAD_MODEL');
    // Random corruption: parses or fails as BAD_MODEL, nothing else.
    let seed = 12345;
    const rnd = (): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.from(good);
      for (let k = 0; k < 3; k++) b[Math.floor(rnd() * b.length)] = Math.floor(rnd() * 256);
      try {
        parseGgufMetadata(b);
      } catch (err) {
        assert.ok(err instanceof KvfError && err.code === 'KVF_ERR_BAD_MODEL', String(err));
      }
    }
    await expectCodeAsync(() => readGgufMetadata(join(tmp, 'nope.gguf')), 'KVF_ERR_BAD_MODEL', /cannot open model file/);
    const truncPath = join(tmp, 'trunc.gguf');
    writeFileSync(truncPath, good.subarray(0, good.length - 5));
    await expectCodeAsync(() => readGgufMetadata(truncPath), 'KVF_ERR_BAD_MODEL', new RegExp(`^${truncPath}: value of 'arr.nested'`));
  });
});

// ----------------------------------------------------------------------------------------------------

function checkOracle(tk: Tokenizer, model: OracleModel): void {
  let mismatches = 0;
  for (const c of model.cases) {
    for (const [parseSpecial, expected] of [
      [false, c.ids],
      [true, c.idsParseSpecial],
    ] as const) {
      const got = tk.encode(c.text, { parseSpecial });
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        mismatches++;
        console.error(`mismatch (parseSpecial ${parseSpecial}) ${JSON.stringify(c.text)}\n  got      ${got}\n  expected ${expected}`);
      }
      if (c.roundTrips) assert.equal(tk.decode(got), c.text, `decode(encode(${JSON.stringify(c.text)}))`);
    }
  }
  assert.equal(mismatches, 0, `${mismatches} of ${model.cases.length * 2} encodings differ from the oracle`);
}

function checkChats(tk: Tokenizer, meta: GgufMetadata, model: OracleModel): void {
  const tpl = ChatTemplate.fromGguf(meta);
  assert.equal(tpl.kind, 'chatml');
  assert.equal(tpl.defaultSystem, '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n');
  for (const chat of model.chats) {
    const opts = { addGenerationPrompt: chat.add_generation_prompt };
    assert.equal(tpl.render(chat.messages, opts), chat.text, JSON.stringify(chat.messages));
    assert.deepEqual(tpl.encode(tk, chat.messages, { ...opts, parseSpecialInContent: true }), chat.ids);
    const safe = tpl.encode(tk, chat.messages, opts);
    if (chat.messages.some((m) => m.content.includes('<|'))) {
      // Markers typed in a message stay text: fewer control tokens than the oracle's whole-prompt parse.
      const controls = (ids: number[]): number => ids.filter((id) => tk.isControl(id)).length;
      assert.ok(controls(safe) < controls(chat.ids));
      assert.equal(tk.decode(safe), chat.text);
    } else {
      assert.deepEqual(safe, chat.ids);
    }
  }
}

describe('tokenizer', () => {
  test('tiny model matches the oracle', () => {
    // A drifted vocabulary fails rather than skips: a skipped oracle would leave the tokenizer unchecked in CI.
    assert.equal(
      fingerprint(tinyMeta),
      fixture.tiny.fingerprint,
      `scripts/make-tiny-model.mjs now writes another vocabulary than the fixture's; ${REGENERATE}`,
    );
    checkOracle(tiny, fixture.tiny);
    checkChats(tiny, tinyMeta, fixture.tiny);
  });

  describe('real model (SmolLM2-135M-Instruct)', { skip: HAVE_REAL ? false : `no ${REAL_MODEL} (npm run fetch-model)` }, () => {
    let real: Tokenizer;
    let realMeta: GgufMetadata;
    before(async () => {
      realMeta = await readGgufMetadata(REAL_MODEL);
      real = Tokenizer.fromGguf(realMeta);
    });

    test('properties', () => {
      assert.equal(fingerprint(realMeta), fixture.real.fingerprint, 'the model file differs from the one the fixture was made from');
      assert.equal(real.vocabSize, 49152);
      assert.equal(real.pre, 'smollm');
      assert.deepEqual([real.bosId, real.eosId, real.unkId, real.padId], [1, 2, 0, 2]);
      assert.equal(real.addBos, false);
      assert.equal(real.tokenText(2), '<|im_end|>');
      assert.equal(real.tokenType(2), TokenType.CONTROL);
      assert.equal(real.tokenToId('<|im_start|>'), 1);
    });

    test('matches the oracle (Hugging Face tokenizers) on every string, both special modes', () => {
      checkOracle(real, fixture.real);
    });

    test('chat template matches jinja2 + tokenizers', () => {
      checkChats(real, realMeta, fixture.real);
    });

    test('streaming detokenizer yields only complete characters', () => {
      const text = '日本語のテキスト 🤗😀 family 👨\u200d👩\u200d👧 and café';
      const ids = real.encode(text);
      const dec = real.decoder();
      const chunks = ids.map((id) => dec.push(id));
      chunks.push(dec.flush());
      assert.equal(chunks.join(''), text);
      assert.ok(
        chunks.every((c) => !c.includes('\ufffd')),
        'no replacement characters',
      );
      assert.ok(
        chunks.some((c) => c === ''),
        'some token ends inside a character (the test would prove nothing otherwise)',
      );
      // Each chunk is whole characters: it round-trips through UTF-8 unchanged.
      for (const c of chunks) assert.equal(Buffer.from(c, 'utf8').toString('utf8'), c);
    });

    test('encodes a long text quickly', () => {
      const text =
        fixture.real.cases
          .map((c) => c.text)
          .join('\n')
          .repeat(20) + ' '.repeat(50_000);
      const t0 = performance.now();
      const ids = real.encode(text);
      const ms = performance.now() - t0;
      assert.equal(real.decode(ids), text.replaceAll('\u001d', ''));
      assert.ok(ms < 2000, `${ms} ms`);
    });
  });

  test('special tokens: parsed only with parseSpecial; bos/eos; skipSpecial', () => {
    const text = '<|im_start|>user\nHello<|im_end|>';
    const plain = tiny.encode(text);
    const special = tiny.encode(text, { parseSpecial: true });
    assert.equal(special[0], 1);
    assert.equal(special.at(-1), 2);
    assert.ok(!plain.includes(1) && !plain.includes(2));
    assert.equal(tiny.decode(plain), text);
    assert.equal(tiny.decode(special), text);
    assert.equal(tiny.decode(special, { skipSpecial: true }), 'user\nHello');
    assert.deepEqual(tiny.encode('Hello', { addBos: true, addEos: true }), [1, ...tiny.encode('Hello'), 2]);
    // A predicate picks which occurrences count.
    const first = tiny.encode('<|im_end|><|im_end|>', { parseSpecial: (start) => start === 0 });
    assert.equal(first[0], 2);
    assert.ok(first.slice(1).every((id) => id !== 2));
    assert.equal(tiny.decode(first), '<|im_end|><|im_end|>');
  });

  test('streaming detokenizer on byte-level tokens (tiny model: every non-ASCII byte is a token)', () => {
    const text = 'The fox: 日本 🤗 ü!';
    const ids = tiny.encode(text);
    const dec = tiny.decoder();
    const chunks = ids.map((id) => dec.push(id));
    assert.equal(chunks.join('') + dec.flush(), text);
    assert.ok(!chunks.join('').includes('\ufffd'));
    // '🤗' is 4 tokens here: the first three complete nothing.
    const emoji = tiny.encode('🤗');
    assert.equal(emoji.length, 4);
    const d2 = tiny.decoder();
    assert.deepEqual(
      emoji.map((id) => d2.push(id)),
      ['', '', '', '🤗'],
    );
    // A stream cut inside a character: flush gives U+FFFD; a stray continuation byte is U+FFFD at once.
    const d3 = tiny.decoder();
    assert.equal(d3.push(emoji[0]!) + d3.push(emoji[1]!), '');
    assert.equal(d3.flush(), '\ufffd');
    assert.equal(tiny.decode(emoji.slice(1)), '\ufffd\ufffd\ufffd');
    const u = new Utf8StreamDecoder();
    assert.equal(u.push(Uint8Array.of(0xe6)), '');
    assert.equal(u.push(Uint8Array.of(0x97)), '');
    assert.equal(u.push(Uint8Array.of(0xa5, 0x41)), '日A');
    assert.equal(u.flush(), '');
  });

  test('round-trips arbitrary text on the tiny model', () => {
    let seed = 7;
    const rnd = (n: number): number => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n;
    const alphabet = ['a', 'Z', ' ', '  ', '\n', '\t', '1', '23', "'s", "'ll", '!', '.', 'é', '日', '🤗', '\u00a0', '\u0085', 'the', ' fox'];
    for (let i = 0; i < 300; i++) {
      let s = '';
      for (let k = rnd(20); k > 0; k--) s += alphabet[rnd(alphabet.length)];
      assert.equal(tiny.decode(tiny.encode(s)), s, JSON.stringify(s));
    }
  });

  test('bad arguments and unusable vocabularies', () => {
    expectCode(() => tiny.decode([300]), 'KVF_ERR_INVALID_ARGUMENT', /token id 300 is outside the vocabulary \(300 tokens\)/);
    expectCode(() => tiny.decode([-1]), 'KVF_ERR_INVALID_ARGUMENT');
    expectCode(() => tiny.encode(42 as unknown as string), 'KVF_ERR_INVALID_ARGUMENT');
    const base: Kv[] = [
      ['tokenizer.ggml.model', GgufType.STRING, 'gpt2'],
      ['tokenizer.ggml.pre', GgufType.STRING, 'smollm'],
      ['tokenizer.ggml.tokens', GgufType.ARRAY, ['a', 'b', 'ab'], GgufType.STRING],
      ['tokenizer.ggml.token_type', GgufType.ARRAY, [1, 1, 1], GgufType.INT32],
      ['tokenizer.ggml.merges', GgufType.ARRAY, ['a b'], GgufType.STRING],
    ];
    const make = (over: Kv[], drop: string[] = []): Tokenizer => {
      const keys = new Set([...over.map((k) => k[0]), ...drop]);
      return Tokenizer.fromGguf(parseGgufMetadata(ggufBytes([...base.filter((k) => !keys.has(k[0])), ...over]), 'test.gguf'));
    };
    assert.deepEqual(make([]).encode('abab'), [2, 2]);
    assert.deepEqual(make([], ['tokenizer.ggml.token_type', 'tokenizer.ggml.pre']).encode('ab'), [2]);
    expectCode(
      () => make([['tokenizer.ggml.model', GgufType.STRING, 'llama']]),
      'KVF_ERR_BAD_MODEL',
      /test.gguf: tokenizer.ggml.model 'llama' is not supported/,
    );
    expectCode(() => make([['tokenizer.ggml.pre', GgufType.STRING, 'qwen2']]), 'KVF_ERR_BAD_MODEL', /tokenizer.ggml.pre 'qwen2' is not supported/);
    expectCode(() => make([], ['tokenizer.ggml.tokens']), 'KVF_ERR_BAD_MODEL', /'tokenizer.ggml.tokens' must be an array of strings, got missing/);
    expectCode(() => make([['tokenizer.ggml.token_type', GgufType.ARRAY, [1], GgufType.INT32]]), 'KVF_ERR_BAD_MODEL', /token_type has 1 entries/);
    expectCode(() => make([['tokenizer.ggml.merges', GgufType.ARRAY, ['ab'], GgufType.STRING]]), 'KVF_ERR_BAD_MODEL', /merges\[0\] 'ab' is not two symbols/);
    expectCode(() => make([['tokenizer.ggml.eos_token_id', GgufType.UINT32, 3]]), 'KVF_ERR_BAD_MODEL', /eos_token_id 3 is outside the vocabulary/);
    expectCode(() => make([['tokenizer.ggml.add_bos_token', GgufType.BOOL, true]]), 'KVF_ERR_BAD_MODEL', /add_bos_token is true but there is no bos_token_id/);
    // User-defined tokens (type 4) are matched even without parseSpecial, control tokens (3) only with it.
    const tk = make([
      ['tokenizer.ggml.tokens', GgufType.ARRAY, ['a', 'b', 'ab', '<u>', '<c>', '[x-y]{1,2}\\d/$'], GgufType.STRING],
      ['tokenizer.ggml.token_type', GgufType.ARRAY, [1, 1, 1, 4, 3, 3], GgufType.INT32],
    ]);
    assert.deepEqual(tk.encode('a[x-y]{1,2}\\d/$', { parseSpecial: true }), [0, 5]); // regex syntax in token text
    assert.deepEqual(tk.encode('a<u>b'), [0, 3, 1]);
    assert.deepEqual(tk.encode('<c>', { parseSpecial: true }), [4]);
    assert.equal(tk.decode([3, 4], { skipSpecial: true }), '<u>');
  });
});

describe('chat template', () => {
  const messages: ChatMessage[] = [{ role: 'user', content: 'Hi' }];
  test('plain ChatML without a default system message', () => {
    const tpl = ChatTemplate.parse(
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\n" +
        '  {% if add_generation_prompt %}\n{{ "<|im_start|>assistant\\n" }}{% endif %}\n',
    );
    assert.equal(tpl.kind, 'chatml');
    assert.equal(tpl.render(messages), '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    assert.equal(tpl.render(messages, { addGenerationPrompt: false }), '<|im_start|>user\nHi<|im_end|>\n');
  });

  test('unsupported templates and bad messages are refused', () => {
    const llama3 =
      "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
    expectCode(
      () => ChatTemplate.parse(llama3, 'llama3.gguf'),
      'KVF_ERR_BAD_MODEL',
      /llama3.gguf: unsupported tokenizer.chat_template \(expected \{% for message in messages %\}/,
    );
    expectCode(
      () => ChatTemplate.parse("{% for message in messages %}{{ message['content'] | upper }}{% endfor %}"),
      'KVF_ERR_BAD_MODEL',
      /unsupported expression/,
    );
    expectCode(
      () => ChatTemplate.parse("{% for message in messages %}x{{ message['content'] }}{% endfor %}"),
      'KVF_ERR_BAD_MODEL',
      /literal text "x" between tags/,
    );
    expectCode(() => ChatTemplate.parse("{%- for message in messages %}{{ message['content'] }}{% endfor %}"), 'KVF_ERR_BAD_MODEL', /whitespace control/);
    expectCode(() => ChatTemplate.parse("{% for message in messages %}{{ message['role'] }}{% endfor %}"), 'KVF_ERR_BAD_MODEL', /message\['content'\] once/);
    expectCode(
      () => ChatTemplate.parse("{% for message in messages %}{{ message['content'] }}{% endfor %}{% if tools %}{% endif %}"),
      'KVF_ERR_BAD_MODEL',
      /expected \{% if add_generation_prompt %\}/,
    );
    const noTemplate = parseGgufMetadata(ggufBytes([['general.architecture', GgufType.STRING, 'llama']]), 'x.gguf');
    expectCode(() => ChatTemplate.fromGguf(noTemplate), 'KVF_ERR_BAD_MODEL', /x.gguf: the model has no tokenizer.chat_template/);
    const tpl = ChatTemplate.fromGguf(tinyMeta);
    expectCode(() => tpl.render([{ role: 'user' } as ChatMessage]), 'KVF_ERR_INVALID_ARGUMENT', /messages\[0\]/);
  });
});
