// Versioned binary codec for an agent's metadata blob: what one agent tells its peers about itself
// (libfabric provider, endpoint address per rail, registered memory regions and their keys).
//
// Blobs arrive from the network, so decodeMetadata treats every byte as hostile: each read is
// bounds-checked, and anything wrong surfaces as a KvfError with code KVF_ERR_BAD_METADATA whose
// message names the field, its offset, and what was expected versus found. No other exception
// escapes it.
//
// Format v4, all integers little-endian:
//
//   offset  size  field
//   0       4     magic, ASCII "KVFM"
//   4       2     u16 version (METADATA_VERSION)
//   6       2     u16 flags: bit0 = virtAddr (FI_MR_VIRT_ADDR); every other bit must be 0
//   8       4     u32 total length of the blob, trailing CRC included
//   12      1+n   u8 nameLen (1..255), name bytes (UTF-8)
//           1+n   u8 providerLen (1..255), provider bytes (UTF-8)
//           1     u8 railCount (1..64)
//                 per rail: u8 addrLen (1..255), addr bytes (fi_getname output)
//           4     u32 regionCount (0..1_048_576)
//                 per region: u32 id, u64 length (1..2^53-1), u64 base,
//                   u32 share fd (0xffffffff: not shared), u64 share inode, u64 share offset (0 unless shared),
//                   railCount x u64 key
//           1+n   u8 hostLen (0..255), host identity bytes (UTF-8; 0 = unknown)
//           4     u32 pid of the agent's process (0 = unknown)
//           4     u32 region table fd (0xffffffff: no table)
//           8     u64 region table inode (0 unless a table)
//           16    region table nonce (zeros unless a table)
//           4     u32 CRC-32 (IEEE / zlib polynomial) of every preceding byte
//
// v2 added the host identity and pid (the same-host fast path: peers with the same identity can copy by
// cross-memory attach), and `base` is always the region's virtual address, whatever the provider's
// addressing (virtAddr says whether libfabric RMA uses it).
// v3 added where a region's shared memory can be found (the same-host mapped path: a peer on this host maps
// /proc/<pid>/fd/<fd> after checking the inode, and copies with memcpy).
// v4 added the region table (native/core/region_table.h): where a same-host peer finds the memfd that says
// which regions are advertised right now, checked by inode and a random nonce before anything of the pid is
// touched; the same-host paths and the shm provider are used only once it is confirmed.
//
// A reader accepts only the version it was built for: a layout change must bump METADATA_VERSION,
// and an older peer then reports "unsupported metadata version N" instead of misreading fields.

import { KvfError } from '../common/errors.js';

export const METADATA_VERSION = 4;

export interface RegionDescription {
  /** Region id, unique within one agent (u32). */
  id: number;
  /** Length in bytes, 1..Number.MAX_SAFE_INTEGER. */
  length: number;
  /** Remote address of the first byte: a virtual address when virtAddr is true, else an offset. */
  base: bigint;
  /** One memory-registration key per rail, in rail order (u64 each). */
  keys: bigint[];
  /** Shared memory (a memfd) a same-host peer may map: the owner's fd number, the file's inode, the region's offset in it. */
  share?: ShareDescription;
}

export interface ShareDescription {
  /** 0..0x7fffffff */
  fd: number;
  /** u64 */
  inode: bigint;
  /** 0..2^53-1 */
  offset: number;
}

export interface AgentDescription {
  /** Agent name, UTF-8, 1..255 bytes. */
  name: string;
  /** libfabric provider name, e.g. "tcp;ofi_rxm", "shm", "efa"; UTF-8, 1..255 bytes. */
  provider: string;
  /** true: remote addresses are virtual addresses (FI_MR_VIRT_ADDR); false: offsets into the region. */
  virtAddr: boolean;
  /** Endpoint address (fi_getname bytes) per rail; 1..64 rails, each 1..255 bytes. */
  rails: Uint8Array[];
  /** 0..1_048_576 regions; each region's keys.length equals rails.length. */
  regions: RegionDescription[];
  /** Where the agent runs: a host identity (same string = same kernel and pid namespace) and its pid. Default unknown. */
  host?: HostDescription;
}

export interface HostDescription {
  /** UTF-8, 0..255 bytes; '' = unknown (never matches). */
  id: string;
  /** u32; 0 = unknown. */
  pid: number;
  /** The agent's region table, for same-host peers; absent = none. */
  table?: TableDescription;
}

export interface TableDescription {
  /** 0..0x7fffffff */
  fd: number;
  /** u64 */
  inode: bigint;
  /** 16 bytes */
  nonce: Uint8Array;
}

const TABLE_NONCE_BYTES = 16;

/** Limits of format v4. */
export const METADATA_LIMITS = Object.freeze({
  maxStringBytes: 255,
  maxRails: 64,
  maxRailAddressBytes: 255,
  maxRegions: 1_048_576,
});

const MAGIC = [0x4b, 0x56, 0x46, 0x4d] as const; // "KVFM"
const FLAG_VIRT_ADDR = 0x0001;
/** magic + version + flags + total length */
const HEADER_BYTES = 12;
const CRC_BYTES = 4;
/** The host section's fixed part after the host id: u32 pid, u32 table fd, u64 table inode, the nonce. */
const HOST_FIXED_BYTES = 4 + 4 + 8 + TABLE_NONCE_BYTES;
/** Smallest well-formed v4 blob: 1-byte name, 1-byte provider, one 1-byte rail, no regions, no host id. */
const MIN_BLOB_BYTES = HEADER_BYTES + (1 + 1) + (1 + 1) + 1 + (1 + 1) + 4 + 1 + HOST_FIXED_BYTES + CRC_BYTES;
/** A region's fixed part: u32 id, u64 length, u64 base, u32 share fd, u64 share inode, u64 share offset (the keys follow). */
const REGION_FIXED_BYTES = 4 + 8 + 8 + 4 + 8 + 8;
const NOT_SHARED = 0xffffffff;
const U64_LIMIT = 1n << 64n;

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, as in zlib). Node 20 has no zlib.crc32.

let crcTable: Uint32Array | undefined;

function getCrcTable(): Uint32Array {
  if (crcTable === undefined) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  return crcTable;
}

/** CRC-32 (zlib's) of bytes[start, end). crc32(Buffer.from('123456789')) === 0xcbf43926. */
export function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  const table = getCrcTable();
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = table[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------------------------------------
// Encoding

function invalid(message: string): KvfError {
  return new KvfError('KVF_ERR_INVALID_ARGUMENT', `encodeMetadata: ${message}`);
}

function hex(value: number | bigint, digits = 0): string {
  return `0x${value.toString(16).padStart(digits, '0')}`;
}

/**
 * Byte length of a string field, checked. Lone surrogates are rejected because UTF-8 cannot carry
 * them (TextEncoder would silently substitute U+FFFD and the peer would see another name).
 */
function checkedStringBytes(field: string, value: unknown): number {
  if (typeof value !== 'string') throw invalid(`${field} must be a string, got ${typeof value}`);
  // With the u flag, a well-formed surrogate pair is one code point, so this matches only lone halves.
  if (/[\uD800-\uDFFF]/u.test(value)) throw invalid(`${field} contains a lone UTF-16 surrogate`);
  const n = Buffer.byteLength(value, 'utf8');
  if (n < 1 || n > METADATA_LIMITS.maxStringBytes) {
    throw invalid(`${field} must be 1..${METADATA_LIMITS.maxStringBytes} UTF-8 bytes, got ${n}`);
  }
  return n;
}

function checkU64(field: string, value: unknown): bigint {
  if (typeof value !== 'bigint') throw invalid(`${field} must be a bigint, got ${typeof value}`);
  if (value < 0n || value >= U64_LIMIT) throw invalid(`${field} ${value} is outside the u64 range`);
  return value;
}

/** Serializes an agent description; throws KVF_ERR_INVALID_ARGUMENT if it cannot be represented. */
export function encodeMetadata(desc: AgentDescription): Buffer {
  if (typeof desc !== 'object' || desc === null) throw invalid('description must be an object');
  // Every field is read once into a local and written from there, so what was validated is what is written.
  const { name, provider, virtAddr, rails, regions } = desc;
  const host = desc.host ?? { id: '', pid: 0 };
  if (typeof host !== 'object' || host === null || typeof host.id !== 'string') throw invalid('host must be { id: string, pid: number }');
  const hostBytes = host.id === '' ? 0 : checkedStringBytes('host.id', host.id);
  if (!Number.isInteger(host.pid) || host.pid < 0 || host.pid > 0xffffffff) throw invalid(`host.pid must be a u32, got ${String(host.pid)}`);
  const table = host.table;
  if (table !== undefined) {
    if (typeof table !== 'object' || table === null) throw invalid('host.table must be { fd, inode, nonce }');
    if (!Number.isInteger(table.fd) || table.fd < 0 || table.fd > 0x7fffffff)
      throw invalid(`host.table.fd must be an integer in 0..${0x7fffffff}, got ${String(table.fd)}`);
    checkU64('host.table.inode', table.inode);
    if (!(table.nonce instanceof Uint8Array) || table.nonce.length !== TABLE_NONCE_BYTES) throw invalid(`host.table.nonce must be ${TABLE_NONCE_BYTES} bytes`);
  }
  const nameBytes = checkedStringBytes('name', name);
  const providerBytes = checkedStringBytes('provider', provider);
  if (typeof virtAddr !== 'boolean') throw invalid(`virtAddr must be a boolean, got ${typeof virtAddr}`);

  if (!Array.isArray(rails)) throw invalid('rails must be an array');
  if (rails.length < 1 || rails.length > METADATA_LIMITS.maxRails) {
    throw invalid(`rails must hold 1..${METADATA_LIMITS.maxRails} addresses, got ${rails.length}`);
  }
  let railBytes = 0;
  const addrs: Uint8Array[] = [];
  for (let r = 0; r < rails.length; r++) {
    const addr: unknown = rails[r];
    if (!(addr instanceof Uint8Array)) throw invalid(`rails[${r}] must be a Uint8Array`);
    addrs.push(addr);
    if (addr.length < 1 || addr.length > METADATA_LIMITS.maxRailAddressBytes) {
      throw invalid(`rails[${r}] must be 1..${METADATA_LIMITS.maxRailAddressBytes} bytes, got ${addr.length}`);
    }
    railBytes += 1 + addr.length;
  }

  if (!Array.isArray(regions)) throw invalid('regions must be an array');
  // Checked before touching any element, so a huge (even sparse) array fails fast.
  if (regions.length > METADATA_LIMITS.maxRegions) {
    throw invalid(`at most ${METADATA_LIMITS.maxRegions} regions fit in metadata, got ${regions.length}`);
  }
  const checked: RegionDescription[] = new Array(regions.length);
  const seen = new Map<number, number>();
  for (let i = 0; i < regions.length; i++) {
    const reg: unknown = regions[i];
    if (typeof reg !== 'object' || reg === null) throw invalid(`regions[${i}] must be an object`);
    const { id, length, base, keys, share } = reg as Partial<RegionDescription>;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id > 0xffffffff) {
      throw invalid(`regions[${i}].id must be an integer in 0..${0xffffffff}, got ${String(id)}`);
    }
    const prev = seen.get(id);
    if (prev !== undefined) throw invalid(`regions[${i}].id ${id} duplicates regions[${prev}].id`);
    seen.set(id, i);
    if (typeof length !== 'number' || !Number.isSafeInteger(length) || length <= 0) {
      throw invalid(`regions[${i}].length must be an integer in 1..${Number.MAX_SAFE_INTEGER}, got ${String(length)}`);
    }
    const b = checkU64(`regions[${i}].base`, base);
    if (b + BigInt(length) > U64_LIMIT) {
      throw invalid(`regions[${i}] base ${hex(b)} + length ${length} wraps past the end of the 64-bit address space`);
    }
    if (!Array.isArray(keys) || keys.length !== rails.length) {
      throw invalid(`regions[${i}].keys must hold one key per rail (${rails.length}), got ${Array.isArray(keys) ? keys.length : typeof keys}`);
    }
    // Array.from visits holes too (map would skip them), so a sparse keys array is rejected here.
    const keyValues = Array.from(keys as unknown[], (key, k) => checkU64(`regions[${i}].keys[${k}]`, key));
    checked[i] = { id, length, base: b, keys: keyValues };
    if (share !== undefined) {
      if (typeof share !== 'object' || share === null) throw invalid(`regions[${i}].share must be { fd, inode, offset }`);
      if (!Number.isInteger(share.fd) || share.fd < 0 || share.fd > 0x7fffffff)
        throw invalid(`regions[${i}].share.fd must be an integer in 0..${0x7fffffff}, got ${String(share.fd)}`);
      if (!Number.isSafeInteger(share.offset) || share.offset < 0)
        throw invalid(`regions[${i}].share.offset must be an integer ≥ 0, got ${String(share.offset)}`);
      checked[i]!.share = { fd: share.fd, inode: checkU64(`regions[${i}].share.inode`, share.inode), offset: share.offset };
    }
  }

  const regionBytes = REGION_FIXED_BYTES + 8 * addrs.length;
  const total =
    HEADER_BYTES + 1 + nameBytes + 1 + providerBytes + 1 + railBytes + 4 + checked.length * regionBytes + 1 + hostBytes + HOST_FIXED_BYTES + CRC_BYTES;
  // Cannot happen within the limits above (the largest blob is ~560 MB), but the field is a u32.
  if (total > 0xffffffff) throw invalid(`metadata would be ${total} bytes, more than a u32 length can describe`);

  const buf = Buffer.alloc(total);
  let off = 0;
  for (const byte of MAGIC) buf[off++] = byte;
  off = buf.writeUInt16LE(METADATA_VERSION, off);
  off = buf.writeUInt16LE(virtAddr ? FLAG_VIRT_ADDR : 0, off);
  off = buf.writeUInt32LE(total, off);
  off = buf.writeUInt8(nameBytes, off);
  off += buf.write(name, off, 'utf8');
  off = buf.writeUInt8(providerBytes, off);
  off += buf.write(provider, off, 'utf8');
  off = buf.writeUInt8(addrs.length, off);
  for (const addr of addrs) {
    off = buf.writeUInt8(addr.length, off);
    buf.set(addr, off);
    off += addr.length;
  }
  off = buf.writeUInt32LE(checked.length, off);
  for (const reg of checked) {
    off = buf.writeUInt32LE(reg.id, off);
    off = buf.writeBigUInt64LE(BigInt(reg.length), off);
    off = buf.writeBigUInt64LE(reg.base, off);
    off = buf.writeUInt32LE(reg.share?.fd ?? NOT_SHARED, off);
    off = buf.writeBigUInt64LE(reg.share?.inode ?? 0n, off);
    off = buf.writeBigUInt64LE(BigInt(reg.share?.offset ?? 0), off);
    for (const key of reg.keys) off = buf.writeBigUInt64LE(key, off);
  }
  off = buf.writeUInt8(hostBytes, off);
  off += buf.write(host.id, off, 'utf8');
  off = buf.writeUInt32LE(host.pid, off);
  off = buf.writeUInt32LE(table?.fd ?? NOT_SHARED, off);
  off = buf.writeBigUInt64LE(table?.inode ?? 0n, off);
  if (table) buf.set(table.nonce, off);
  off += TABLE_NONCE_BYTES;
  off = buf.writeUInt32LE(crc32(buf, 0, off), off);
  if (off !== total) throw new Error(`encodeMetadata internal error: wrote ${off} of ${total} bytes`);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Decoding

function bad(message: string): KvfError {
  return new KvfError('KVF_ERR_BAD_METADATA', `bad agent metadata: ${message}`);
}

/** Bounds-checked little-endian reader over the blob's body (header excluded, CRC excluded). */
class Reader {
  offset: number;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly view: DataView,
    start: number,
    /** First byte the reader may not touch: the CRC. */
    readonly end: number,
  ) {
    this.offset = start;
  }

  get remaining(): number {
    return this.end - this.offset;
  }

  need(field: string, n: number): void {
    if (n > this.remaining) {
      throw bad(`${field} needs ${n} byte(s) at offset ${this.offset}, but only ${this.remaining} remain before the CRC`);
    }
  }

  u8(field: string): number {
    this.need(field, 1);
    return this.bytes[this.offset++]!;
  }

  u32(field: string): number {
    this.need(field, 4);
    const v = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(field, 8);
    const v = this.view.getBigUint64(this.offset, true);
    this.offset += 8;
    return v;
  }

  /** A copy, so the result never aliases (or keeps alive) the caller's buffer. */
  take(field: string, n: number): Uint8Array {
    this.need(field, n);
    // new Uint8Array(view) copies; Buffer#slice would not, and would hand back a Buffer besides.
    const out = new Uint8Array(this.bytes.subarray(this.offset, this.offset + n));
    this.offset += n;
    return out;
  }

  /** u8 length (1..255) followed by that many bytes. */
  lengthPrefixed(field: string): { at: number; bytes: Uint8Array } {
    const at = this.offset;
    const n = this.u8(`${field} length`);
    if (n === 0) throw bad(`${field} length at offset ${at} is 0 (expected 1..255)`);
    return { at: at + 1, bytes: this.take(field, n) };
  }
}

// ignoreBOM: keep a leading U+FEFF in the string instead of stripping it, so names round-trip exactly.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function decodeUtf8(field: string, at: number, bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw bad(`${field} at offset ${at} (${bytes.length} bytes) is not valid UTF-8`);
  }
}

/** Parses and validates a metadata blob from a peer; throws KvfError KVF_ERR_BAD_METADATA on any defect. */
export function decodeMetadata(blob: Uint8Array): AgentDescription {
  try {
    return decodeChecked(blob);
  } catch (err) {
    // Every check below throws a KvfError itself; this net keeps the "only KvfError" promise even if
    // the runtime throws something unforeseen (e.g. a buffer detached or resized under us).
    if (err instanceof KvfError) throw err;
    throw new KvfError('KVF_ERR_BAD_METADATA', `bad agent metadata: ${String(err)}`, { cause: err });
  }
}

function decodeChecked(input: unknown): AgentDescription {
  if (!(input instanceof Uint8Array)) {
    const got = input === null ? 'null' : typeof input === 'object' ? Object.prototype.toString.call(input) : typeof input;
    throw bad(`expected a Uint8Array, got ${got}`);
  }
  const blob = input;
  const size = blob.length;
  if (size < HEADER_BYTES) throw bad(`blob is ${size} bytes, shorter than the ${HEADER_BYTES}-byte header`);
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);

  for (let i = 0; i < MAGIC.length; i++) {
    if (blob[i] !== MAGIC[i]) {
      const got = Array.from(blob.subarray(0, 4), (b) => b.toString(16).padStart(2, '0')).join(' ');
      throw bad(`magic at offset 0 is [${got}], expected [4b 56 46 4d] ("KVFM")`);
    }
  }
  const version = view.getUint16(4, true);
  if (version !== METADATA_VERSION) {
    throw bad(`unsupported metadata version ${version} (this build reads ${METADATA_VERSION})`);
  }
  const total = view.getUint32(8, true);
  if (total !== size) throw bad(`total length field at offset 8 says ${total} bytes, but the blob is ${size} bytes`);
  if (size < MIN_BLOB_BYTES) {
    throw bad(`blob is ${size} bytes, shorter than the smallest valid v${METADATA_VERSION} blob (${MIN_BLOB_BYTES} bytes)`);
  }
  const end = size - CRC_BYTES;
  const storedCrc = view.getUint32(end, true);
  const actualCrc = crc32(blob, 0, end);
  if (storedCrc !== actualCrc) {
    throw bad(`CRC-32 at offset ${end} is ${hex(storedCrc, 8)}, but the preceding bytes hash to ${hex(actualCrc, 8)}`);
  }

  // The CRC only proves the blob was not damaged in transit; a buggy or hostile peer can still
  // send a well-checksummed blob with nonsense in it, so every field is checked from here on.
  const flags = view.getUint16(6, true);
  if ((flags & ~FLAG_VIRT_ADDR) !== 0) {
    throw bad(`flags at offset 6 are ${hex(flags, 4)}; only bit0 (virtAddr) is defined, expected the others to be 0`);
  }

  const rd = new Reader(blob, view, HEADER_BYTES, end);
  const name = rd.lengthPrefixed('name');
  const provider = rd.lengthPrefixed('provider');

  const railCountAt = rd.offset;
  const railCount = rd.u8('rail count');
  if (railCount < 1 || railCount > METADATA_LIMITS.maxRails) {
    throw bad(`rail count at offset ${railCountAt} is ${railCount}, expected 1..${METADATA_LIMITS.maxRails}`);
  }
  const rails: Uint8Array[] = [];
  for (let r = 0; r < railCount; r++) rails.push(rd.lengthPrefixed(`rail[${r}] address`).bytes);

  const regionCountAt = rd.offset;
  const regionCount = rd.u32('region count');
  if (regionCount > METADATA_LIMITS.maxRegions) {
    throw bad(`region count at offset ${regionCountAt} is ${regionCount}, expected at most ${METADATA_LIMITS.maxRegions}`);
  }
  // The region table's size follows from regionCount and railCount; checking it up front rejects a
  // lying count before anything is allocated, and a key count that disagrees with the rail count.
  const regionBytes = REGION_FIXED_BYTES + 8 * railCount;
  const tableBytes = regionCount * regionBytes;
  if (tableBytes > rd.remaining) {
    throw bad(
      `region table at offset ${rd.offset} needs ${regionCount} x ${regionBytes} = ${tableBytes} bytes ` +
        `(id, length, base, share and ${railCount} key(s) each), but only ${rd.remaining} remain before the CRC`,
    );
  }

  const regions: RegionDescription[] = new Array(regionCount);
  for (let i = 0; i < regionCount; i++) {
    const at = rd.offset;
    const id = rd.u32(`region[${i}].id`);
    const lengthAt = rd.offset;
    const length = rd.u64(`region[${i}].length`);
    if (length === 0n) throw bad(`region[${i}] (id ${id}) length at offset ${lengthAt} is 0, expected > 0`);
    if (length > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw bad(`region[${i}] (id ${id}) length at offset ${lengthAt} is ${length}, expected at most 2^53-1`);
    }
    const base = rd.u64(`region[${i}].base`);
    if (base + length > U64_LIMIT) {
      throw bad(`region[${i}] (id ${id}) at offset ${at}: base ${hex(base)} + length ${length} wraps past 2^64`);
    }
    const fdAt = rd.offset;
    const fd = rd.u32(`region[${i}].share.fd`);
    const inode = rd.u64(`region[${i}].share.inode`);
    const offsetAt = rd.offset;
    const shareOffset = rd.u64(`region[${i}].share.offset`);
    const keys: bigint[] = new Array(railCount);
    for (let k = 0; k < railCount; k++) keys[k] = rd.u64(`region[${i}].keys[${k}]`);
    regions[i] = { id, length: Number(length), base, keys };
    if (fd !== NOT_SHARED) {
      if (fd > 0x7fffffff) throw bad(`region[${i}] (id ${id}) share fd at offset ${fdAt} is ${fd}, expected 0..${0x7fffffff} or ${NOT_SHARED}`);
      if (shareOffset > BigInt(Number.MAX_SAFE_INTEGER))
        throw bad(`region[${i}] (id ${id}) share offset at offset ${offsetAt} is ${shareOffset}, expected at most 2^53-1`);
      regions[i]!.share = { fd, inode, offset: Number(shareOffset) };
    } else if (inode !== 0n || shareOffset !== 0n) {
      throw bad(`region[${i}] (id ${id}) at offset ${fdAt} is not shared but carries a share inode or offset`);
    }
  }

  const firstIndex = new Map<number, number>();
  for (let i = 0; i < regionCount; i++) {
    const id = regions[i]!.id;
    const prev = firstIndex.get(id);
    if (prev !== undefined) {
      throw bad(`region[${i}] at offset ${regionCountAt + 4 + i * regionBytes} repeats id ${id} of region[${prev}]`);
    }
    firstIndex.set(id, i);
  }

  const hostAt = rd.offset;
  const hostLength = rd.u8('host id length');
  const hostId = decodeUtf8('host id', hostAt + 1, rd.take('host id', hostLength));
  const pid = rd.u32('pid');
  const tableAt = rd.offset;
  const tableFd = rd.u32('region table fd');
  const tableInode = rd.u64('region table inode');
  const nonce = rd.take('region table nonce', TABLE_NONCE_BYTES);
  let table: TableDescription | undefined;
  if (tableFd !== NOT_SHARED) {
    if (tableFd > 0x7fffffff) throw bad(`region table fd at offset ${tableAt} is ${tableFd}, expected 0..${0x7fffffff} or ${NOT_SHARED}`);
    table = { fd: tableFd, inode: tableInode, nonce };
  } else if (tableInode !== 0n || nonce.some((b) => b !== 0)) {
    throw bad(`region table at offset ${tableAt} is absent but carries an inode or nonce`);
  }

  if (rd.remaining !== 0) {
    throw bad(`${rd.remaining} unexpected trailing byte(s) at offset ${rd.offset}, after the host section and before the CRC`);
  }

  return {
    name: decodeUtf8('name', name.at, name.bytes),
    provider: decodeUtf8('provider', provider.at, provider.bytes),
    virtAddr: (flags & FLAG_VIRT_ADDR) !== 0,
    rails,
    regions,
    host: table ? { id: hostId, pid, table } : { id: hostId, pid },
  };
}
