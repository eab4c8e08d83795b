// Decoding of the agent metadata blob (format: metadata-format.ts). Blobs arrive from the network, so
// decodeMetadata treats every byte as hostile: each read is bounds-checked, and anything wrong surfaces as a
// KvfError with code KVF_ERR_BAD_METADATA whose message names the field, its offset, and what was expected
// versus found. No other exception escapes it.
import { KvfError } from '../common/errors.js';
import {
  CRC_BYTES,
  FLAG_VIRT_ADDR,
  HEADER_BYTES,
  MAGIC,
  METADATA_LIMITS,
  METADATA_VERSION,
  MIN_BLOB_BYTES,
  NOT_SHARED,
  REGION_FIXED_BYTES,
  TABLE_NONCE_BYTES,
  U64_LIMIT,
  crc32,
  hex,
  DEVICE_FIXED_BYTES,
  DEVICE_FABRIC_FIXED_BYTES,
  DEVICE_FLAG_FABRIC,
  DEVICE_FLAG_IPC,
  DEVICE_KIND_CODES,
  DEVICE_TOKEN_BYTES,
  IPC_HANDLE_BYTES,
  type AgentDescription,
  type DeviceKind,
  type DeviceRegionDescription,
  type RegionDescription,
  type TableDescription,
} from './metadata-format.js';

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

  u16(field: string): number {
    this.need(field, 2);
    const v = this.view.getUint16(this.offset, true);
    this.offset += 2;
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

  const stagingChunkBytes = rd.u32('staging chunk bytes');
  const devices = readDevices(rd, firstIndex, railCount);
  if (devices.length > 0 && stagingChunkBytes === 0) throw bad('device regions are listed but the staging chunk size is 0');

  if (rd.remaining !== 0) {
    throw bad(`${rd.remaining} unexpected trailing byte(s) at offset ${rd.offset}, after the device regions and before the CRC`);
  }

  return {
    name: decodeUtf8('name', name.at, name.bytes),
    provider: decodeUtf8('provider', provider.at, provider.bytes),
    virtAddr: (flags & FLAG_VIRT_ADDR) !== 0,
    rails,
    regions,
    host: table ? { id: hostId, pid, table } : { id: hostId, pid },
    ...(devices.length > 0 ? { devices } : {}),
    ...(stagingChunkBytes > 0 ? { stagingChunkBytes } : {}),
  };
}

const DEVICE_KINDS = new Map<number, DeviceKind>(Object.entries(DEVICE_KIND_CODES).map(([k, v]) => [v, k as DeviceKind]));

/** The device regions section; `hostIds` are the host regions' ids, which a device region (or its fabric id) must not repeat. */
function readDevices(rd: Reader, hostIds: ReadonlyMap<number, number>, rails: number): DeviceRegionDescription[] {
  const countAt = rd.offset;
  const count = rd.u32('device region count');
  if (count > METADATA_LIMITS.maxDeviceRegions)
    throw bad(`device region count at offset ${countAt} is ${count}, expected at most ${METADATA_LIMITS.maxDeviceRegions}`);
  if (count * DEVICE_FIXED_BYTES > rd.remaining)
    throw bad(`${count} device regions at offset ${rd.offset} need at least ${count * DEVICE_FIXED_BYTES} bytes, but only ${rd.remaining} remain`);
  const out: DeviceRegionDescription[] = [];
  const ids = new Set<number>();
  for (let i = 0; i < count; i++) {
    const at = rd.offset;
    const id = rd.u32(`device[${i}].id`);
    if (hostIds.has(id) || ids.has(id)) throw bad(`device[${i}] at offset ${at} repeats region id ${id}`);
    ids.add(id);
    const length = rd.u64(`device[${i}].length`);
    if (length === 0n || length > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`device[${i}] (id ${id}) length is ${length}, expected 1..2^53-1`);
    const kindCode = rd.u8(`device[${i}].kind`);
    const kind = DEVICE_KINDS.get(kindCode);
    if (kind === undefined) throw bad(`device[${i}] (id ${id}) kind is ${kindCode}, expected 1 (cuda) or 2 (stand-in)`);
    const flags = rd.u8(`device[${i}].flags`);
    if ((flags & ~(DEVICE_FLAG_IPC | DEVICE_FLAG_FABRIC)) !== 0)
      throw bad(`device[${i}] (id ${id}) flags are ${hex(flags, 2)}; only bit0 (IPC handle) and bit1 (fabric registration) are defined`);
    const device = rd.u16(`device[${i}].device`);
    const token = rd.take(`device[${i}].token`, DEVICE_TOKEN_BYTES);
    const d: DeviceRegionDescription = { id, length: Number(length), kind, device, token };
    if (flags & DEVICE_FLAG_IPC) {
      if (kind !== 'cuda') throw bad(`device[${i}] (id ${id}) is ${kind} memory but carries a CUDA IPC handle`);
      const handle = rd.take(`device[${i}].ipc.handle`, IPC_HANDLE_BYTES);
      const offset = rd.u64(`device[${i}].ipc.offset`);
      if (offset > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`device[${i}] (id ${id}) IPC offset is ${offset}, expected at most 2^53-1`);
      d.ipc = { handle, offset: Number(offset) };
    }
    if (flags & DEVICE_FLAG_FABRIC) {
      if (rd.remaining < DEVICE_FABRIC_FIXED_BYTES + 8 * rails) throw bad(`device[${i}] (id ${id}) fabric registration runs past the blob`);
      const fabricId = rd.u32(`device[${i}].fabric.id`);
      if (hostIds.has(fabricId) || ids.has(fabricId)) throw bad(`device[${i}] (id ${id}) fabric id ${fabricId} repeats a region id`);
      ids.add(fabricId);
      const base = rd.u64(`device[${i}].fabric.base`);
      const keys = Array.from({ length: rails }, (_, k) => rd.u64(`device[${i}].fabric.keys[${k}]`));
      d.fabric = { id: fabricId, base, keys };
    }
    out.push(d);
  }
  return out;
}
