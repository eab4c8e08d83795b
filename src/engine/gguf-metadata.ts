// Reads the header and metadata key/values of a GGUF (v2 or v3) file, without touching tensor data.
//
// The file is untrusted: every length and count is checked against the bytes that remain before
// anything is allocated or read, and every failure is a KvfError KVF_ERR_BAD_MODEL naming the key and
// the byte offset. Files are read incrementally: a first chunk, grown (doubling) only when the metadata
// runs past it, so a 100 MB model costs a couple of MB of reads.
//
// Layout (little-endian):
//   magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count x { string key, u32 type, value }
//   string = u64 byte length + UTF-8 bytes; array = u32 element type + u64 count + elements.
// Tensor infos follow the metadata; `tensorInfoOffset` says where they start (this module does not read them).
import { open } from 'node:fs/promises';

import { KvfError } from '../common/errors.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32

export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const TYPE_NAMES: Record<number, string> = {
  0: 'UINT8',
  1: 'INT8',
  2: 'UINT16',
  3: 'INT16',
  4: 'UINT32',
  5: 'INT32',
  6: 'FLOAT32',
  7: 'BOOL',
  8: 'STRING',
  9: 'ARRAY',
  10: 'UINT64',
  11: 'INT64',
  12: 'FLOAT64',
};

/** Size in bytes of a fixed-size value type; strings and arrays have no fixed size. */
const FIXED_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

export type GgufArray =
  | { type: GgufType.ARRAY; elementType: GgufType.UINT8; value: Uint8Array }
  | { type: GgufType.ARRAY; elementType: GgufType.INT8; value: Int8Array }
  | { type: GgufType.ARRAY; elementType: GgufType.UINT16; value: Uint16Array }
  | { type: GgufType.ARRAY; elementType: GgufType.INT16; value: Int16Array }
  | { type: GgufType.ARRAY; elementType: GgufType.UINT32; value: Uint32Array }
  | { type: GgufType.ARRAY; elementType: GgufType.INT32; value: Int32Array }
  | { type: GgufType.ARRAY; elementType: GgufType.FLOAT32; value: Float32Array }
  | { type: GgufType.ARRAY; elementType: GgufType.UINT64; value: BigUint64Array }
  | { type: GgufType.ARRAY; elementType: GgufType.INT64; value: BigInt64Array }
  | { type: GgufType.ARRAY; elementType: GgufType.FLOAT64; value: Float64Array }
  | { type: GgufType.ARRAY; elementType: GgufType.BOOL; value: boolean[] }
  | { type: GgufType.ARRAY; elementType: GgufType.STRING; value: string[] }
  | { type: GgufType.ARRAY; elementType: GgufType.ARRAY; value: GgufArray[] };

/** One metadata value with its GGUF type. 64-bit integers are bigints; other numbers are numbers. */
export type GgufValue =
  | { type: GgufType.UINT8 | GgufType.INT8 | GgufType.UINT16 | GgufType.INT16 | GgufType.UINT32 | GgufType.INT32; value: number }
  | { type: GgufType.FLOAT32 | GgufType.FLOAT64; value: number }
  | { type: GgufType.UINT64 | GgufType.INT64; value: bigint }
  | { type: GgufType.BOOL; value: boolean }
  | { type: GgufType.STRING; value: string }
  | GgufArray;

export const GGUF_LIMITS = {
  /** Longest key, in bytes (llama.cpp keys are < 100). */
  maxKeyBytes: 65_536,
  /** Deepest nesting of arrays of arrays. */
  maxArrayDepth: 4,
  /** First read; the reader doubles it while the metadata runs past what it has. */
  initialReadBytes: 4 << 20,
  /** The metadata (header + key/values) may not exceed this. */
  maxMetadataBytes: 1 << 30,
} as const;

export class GgufMetadata {
  constructor(
    readonly version: number,
    readonly tensorCount: number,
    readonly entries: ReadonlyMap<string, GgufValue>,
    /** Byte offset of the first tensor info, just after the last key/value. */
    readonly tensorInfoOffset: number,
    /** Where it came from, for error messages. */
    readonly source: string,
  ) {}

  has(key: string): boolean {
    return this.entries.has(key);
  }

  get(key: string): GgufValue | undefined {
    return this.entries.get(key);
  }

  private bad(key: string, what: string): KvfError {
    const v = this.entries.get(key);
    const got = v === undefined ? 'missing' : typeName(v);
    return new KvfError('KVF_ERR_BAD_MODEL', `${this.source}: metadata key '${key}' ${what}, got ${got}`);
  }

  /** A STRING value; `fallback` when absent (throws when absent without a fallback). */
  getString(key: string, fallback?: string): string {
    const v = this.entries.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v?.type !== GgufType.STRING) throw this.bad(key, 'must be a string');
    return v.value;
  }

  /** Any integer type, as a number (64-bit values must be exact in a double). */
  getInt(key: string, fallback?: number): number {
    const v = this.entries.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v !== undefined) {
      switch (v.type) {
        case GgufType.UINT8:
        case GgufType.INT8:
        case GgufType.UINT16:
        case GgufType.INT16:
        case GgufType.UINT32:
        case GgufType.INT32:
          return v.value;
        case GgufType.UINT64:
        case GgufType.INT64:
          if (v.value <= BigInt(Number.MAX_SAFE_INTEGER) && v.value >= -BigInt(Number.MAX_SAFE_INTEGER)) return Number(v.value);
          throw this.bad(key, 'must fit in a double exactly');
        default:
          break;
      }
    }
    throw this.bad(key, 'must be an integer');
  }

  getFloat(key: string, fallback?: number): number {
    const v = this.entries.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v !== undefined && v.type !== GgufType.ARRAY && typeof v.value === 'number') return v.value;
    throw this.bad(key, 'must be a number');
  }

  getBool(key: string, fallback?: boolean): boolean {
    const v = this.entries.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v?.type !== GgufType.BOOL) throw this.bad(key, 'must be a bool');
    return v.value;
  }

  getStringArray(key: string): string[] {
    const v = this.entries.get(key);
    if (v?.type !== GgufType.ARRAY || v.elementType !== GgufType.STRING) throw this.bad(key, 'must be an array of strings');
    return v.value;
  }

  /** An array of any 8/16/32-bit integer type, as an Int32Array-compatible list of numbers. */
  getIntArray(key: string): ArrayLike<number> {
    const v = this.entries.get(key);
    if (v?.type === GgufType.ARRAY) {
      switch (v.elementType) {
        case GgufType.UINT8:
        case GgufType.INT8:
        case GgufType.UINT16:
        case GgufType.INT16:
        case GgufType.UINT32:
        case GgufType.INT32:
          return v.value;
        default:
          break;
      }
    }
    throw this.bad(key, 'must be an array of 8/16/32-bit integers');
  }
}

export function ggufTypeName(type: number): string {
  return TYPE_NAMES[type] ?? `unknown type ${type}`;
}

function typeName(v: GgufValue): string {
  return v.type === GgufType.ARRAY ? `ARRAY of ${ggufTypeName(v.elementType)}` : ggufTypeName(v.type);
}

// ----------------------------------------------------------------------------------------------------
// Parser over an in-memory prefix of the file.

/** Thrown internally when the parse needs bytes past the loaded prefix of a longer file. */
class NeedMore {
  constructor(readonly upTo: number) {}
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

class Cursor {
  pos = 0;
  private readonly view: DataView;

  constructor(
    private readonly bytes: Uint8Array,
    /** Size of the whole file: reads past `bytes` but within it ask for more; past it, the file is bad. */
    private readonly fileSize: number,
    private readonly source: string,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  fail(message: string, at = this.pos): never {
    throw new KvfError('KVF_ERR_BAD_MODEL', `${this.source}: ${message} (at byte ${at})`);
  }

  remaining(): number {
    return this.fileSize - this.pos;
  }

  /** Makes n bytes at pos readable, or fails naming `what`. */
  need(n: number, what: string): void {
    if (n > this.fileSize - this.pos) {
      this.fail(`truncated: ${what} needs ${n} bytes, only ${this.fileSize - this.pos} left in the file`);
    }
    if (this.pos + n > GGUF_LIMITS.maxMetadataBytes) this.fail(`metadata exceeds ${GGUF_LIMITS.maxMetadataBytes} bytes`);
    if (this.pos + n > this.bytes.length) throw new NeedMore(this.pos + n);
  }

  /** A view of the next n bytes, consumed. */
  dataView(n: number, what: string): DataView {
    this.need(n, what);
    const d = new DataView(this.bytes.buffer, this.bytes.byteOffset + this.pos, n);
    this.pos += n;
    return d;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** A u64 count or length that must be at most `max` (a number, so it fits in a double). */
  count(what: string, max: number): number {
    const at = this.pos;
    const v = this.u64(what);
    if (v > BigInt(max)) this.fail(`${what} ${v} is larger than the ${max} the rest of the file can hold`, at);
    return Number(v);
  }

  string(what: string, maxBytes = Number.MAX_SAFE_INTEGER): string {
    const at = this.pos;
    const len = this.count(`${what} length`, Math.max(0, this.remaining() - 8));
    if (len > maxBytes) this.fail(`${what} length ${len} exceeds the limit of ${maxBytes} bytes`, at);
    this.need(len, what);
    const raw = this.bytes.subarray(this.pos, this.pos + len);
    this.pos += len;
    try {
      return utf8.decode(raw);
    } catch {
      return this.fail(`${what} is not valid UTF-8`, at);
    }
  }

  typedArray<T>(n: number, elemSize: number, what: string, make: (buf: ArrayBuffer) => T): T {
    const bytes = n * elemSize;
    this.need(bytes, what);
    // Copy into a fresh, aligned buffer (the source offset may be unaligned; the platform is little-endian
    // for every Node target we build for, checked below).
    const copy = new Uint8Array(bytes);
    copy.set(this.bytes.subarray(this.pos, this.pos + bytes));
    this.pos += bytes;
    return make(copy.buffer);
  }
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('gguf-metadata: big-endian hosts are not supported');
}

function readValue(c: Cursor, type: number, what: string, depth: number): GgufValue {
  const at = c.pos;
  const dv = (n: number): DataView => c.dataView(n, what);
  switch (type) {
    case GgufType.UINT8:
      return { type, value: dv(1).getUint8(0) };
    case GgufType.INT8:
      return { type, value: dv(1).getInt8(0) };
    case GgufType.UINT16:
      return { type, value: dv(2).getUint16(0, true) };
    case GgufType.INT16:
      return { type, value: dv(2).getInt16(0, true) };
    case GgufType.UINT32:
      return { type, value: dv(4).getUint32(0, true) };
    case GgufType.INT32:
      return { type, value: dv(4).getInt32(0, true) };
    case GgufType.FLOAT32:
      return { type, value: dv(4).getFloat32(0, true) };
    case GgufType.UINT64:
      return { type, value: dv(8).getBigUint64(0, true) };
    case GgufType.INT64:
      return { type, value: dv(8).getBigInt64(0, true) };
    case GgufType.FLOAT64:
      return { type, value: dv(8).getFloat64(0, true) };
    case GgufType.BOOL: {
      const b = dv(1).getUint8(0);
      if (b > 1) c.fail(`${what}: bool byte is ${b}, not 0 or 1`, at);
      return { type, value: b === 1 };
    }
    case GgufType.STRING:
      return { type, value: c.string(what) };
    case GgufType.ARRAY:
      return readArray(c, what, depth + 1);
    default:
      return c.fail(`${what} has unknown value type ${type}`, at);
  }
}

function readArray(c: Cursor, what: string, depth: number): GgufArray {
  if (depth > GGUF_LIMITS.maxArrayDepth) c.fail(`${what}: arrays nested deeper than ${GGUF_LIMITS.maxArrayDepth}`);
  const typeAt = c.pos;
  const elementType = c.u32(`${what} element type`);
  if (TYPE_NAMES[elementType] === undefined) c.fail(`${what} has unknown array element type ${elementType}`, typeAt);
  // Every element takes at least its fixed size, or 8 bytes (a string's or array's length field).
  const minSize = FIXED_SIZE[elementType] ?? (elementType === GgufType.STRING ? 8 : 12);
  const n = c.count(`${what} element count`, Math.floor(Math.max(0, c.remaining() - 8) / minSize));
  const elems = `${what} (${n} x ${ggufTypeName(elementType)})`;
  switch (elementType) {
    case GgufType.UINT8:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 1, elems, (b) => new Uint8Array(b)) };
    case GgufType.INT8:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 1, elems, (b) => new Int8Array(b)) };
    case GgufType.UINT16:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 2, elems, (b) => new Uint16Array(b)) };
    case GgufType.INT16:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 2, elems, (b) => new Int16Array(b)) };
    case GgufType.UINT32:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 4, elems, (b) => new Uint32Array(b)) };
    case GgufType.INT32:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 4, elems, (b) => new Int32Array(b)) };
    case GgufType.FLOAT32:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 4, elems, (b) => new Float32Array(b)) };
    case GgufType.UINT64:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 8, elems, (b) => new BigUint64Array(b)) };
    case GgufType.INT64:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 8, elems, (b) => new BigInt64Array(b)) };
    case GgufType.FLOAT64:
      return { type: GgufType.ARRAY, elementType, value: c.typedArray(n, 8, elems, (b) => new Float64Array(b)) };
    case GgufType.BOOL: {
      const start = c.pos;
      const raw = c.typedArray(n, 1, elems, (b) => new Uint8Array(b));
      const out = new Array<boolean>(n);
      for (let i = 0; i < n; i++) {
        const b = raw[i]!;
        if (b > 1) c.fail(`${what}[${i}]: bool byte is ${b}, not 0 or 1`, start + i);
        out[i] = b === 1;
      }
      return { type: GgufType.ARRAY, elementType, value: out };
    }
    case GgufType.STRING: {
      const out = new Array<string>(n);
      for (let i = 0; i < n; i++) out[i] = c.string(`${what}[${i}]`);
      return { type: GgufType.ARRAY, elementType, value: out };
    }
    case GgufType.ARRAY: {
      const out = new Array<GgufArray>(n);
      for (let i = 0; i < n; i++) out[i] = readArray(c, `${what}[${i}]`, depth + 1);
      return { type: GgufType.ARRAY, elementType, value: out };
    }
    default:
      return c.fail(`${what} has unknown array element type ${elementType}`, typeAt);
  }
}

/**
 * Parses header + metadata from `bytes`, the first bytes of a file of `fileSize` bytes (the whole file when
 * fileSize is omitted). Throws KVF_ERR_BAD_MODEL for malformed input; NeedMore (internal) when `bytes` is a
 * strict prefix that ends too early.
 */
function parse(bytes: Uint8Array, fileSize: number, source: string): GgufMetadata {
  const c = new Cursor(bytes, fileSize, source);
  if (fileSize < 4) c.fail(`not a GGUF file: ${fileSize} bytes, too short for the magic`, 0);
  const magic = c.u32('magic');
  if (magic !== GGUF_MAGIC) {
    const shown = [...bytes.subarray(0, 4)].map((b) => b.toString(16).padStart(2, '0')).join(' ');
    c.fail(`not a GGUF file: magic is ${shown}, expected 47 47 55 46 ("GGUF")`, 0);
  }
  const version = c.u32('version');
  if (version === 1) c.fail('GGUF version 1 is not supported (only 2 and 3)', 4);
  if (version !== 2 && version !== 3) c.fail(`unsupported GGUF version ${version} (only 2 and 3)`, 4);
  // Bounds are loose upper limits from the file size; they only stop absurd counts early.
  const tensorCount = c.count('tensor count', Math.floor(fileSize / 24));
  const kvCount = c.count('metadata key/value count', Math.floor(Math.max(0, c.remaining() - 8) / 13));
  const entries = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const keyAt = c.pos;
    const key = c.string(`key of metadata entry ${i}`, GGUF_LIMITS.maxKeyBytes);
    if (key.length === 0) c.fail(`key of metadata entry ${i} is empty`, keyAt);
    if (entries.has(key)) c.fail(`duplicate metadata key '${key}'`, keyAt);
    const typeAt = c.pos;
    const type = c.u32(`type of '${key}'`);
    if (TYPE_NAMES[type] === undefined) c.fail(`metadata key '${key}' has unknown value type ${type}`, typeAt);
    entries.set(key, readValue(c, type, `value of '${key}'`, 0));
  }
  return new GgufMetadata(version, tensorCount, entries, c.pos, source);
}

/** Parses header + metadata from the whole of a GGUF file (or a buffer holding a complete one). */
export function parseGgufMetadata(bytes: Uint8Array, source = 'GGUF buffer'): GgufMetadata {
  try {
    return parse(bytes, bytes.length, source);
  } catch (err) {
    if (err instanceof NeedMore) throw new Error('unreachable: NeedMore on a complete buffer', { cause: err });
    throw err;
  }
}

function nextSize(have: number, needMore: NeedMore, fileSize: number): number {
  return Math.min(fileSize, Math.max(have * 2, needMore.upTo + (1 << 20)));
}

/** Reads header + metadata from a GGUF file, reading only as much of the file as the metadata takes. */
export async function readGgufMetadata(path: string): Promise<GgufMetadata> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    throw new KvfError('KVF_ERR_BAD_MODEL', `${path}: cannot open model file: ${(err as Error).message}`, { cause: err });
  }
  try {
    const fileSize = (await fh.stat()).size;
    let size = Math.min(fileSize, GGUF_LIMITS.initialReadBytes);
    for (;;) {
      const buf = Buffer.allocUnsafe(size);
      const { bytesRead } = await fh.read(buf, 0, size, 0);
      if (bytesRead !== size) throw new KvfError('KVF_ERR_BAD_MODEL', `${path}: short read (${bytesRead} of ${size} bytes); was the file changed?`);
      try {
        return parse(buf, fileSize, path);
      } catch (err) {
        if (!(err instanceof NeedMore)) throw err;
        size = nextSize(size, err, fileSize);
      }
    }
  } finally {
    await fh.close();
  }
}
