// Encoding of the agent metadata blob (format: metadata-format.ts). The description comes from this process,
// but possibly from a caller's hands (encodeMetadata is public), so every field is checked before a byte is
// written, and what cannot be represented is a KVF_ERR_INVALID_ARGUMENT naming the field.
import { KvfError } from '../common/errors.js';
import {
  CRC_BYTES,
  FLAG_VIRT_ADDR,
  HEADER_BYTES,
  HOST_FIXED_BYTES,
  MAGIC,
  METADATA_LIMITS,
  METADATA_VERSION,
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
  DEVICE_IPC_BYTES,
  DEVICE_KIND_CODES,
  DEVICE_TOKEN_BYTES,
  IPC_HANDLE_BYTES,
  type AgentDescription,
  type DeviceRegionDescription,
  type RegionDescription,
} from './metadata-format.js';

function invalid(message: string): KvfError {
  return new KvfError('KVF_ERR_INVALID_ARGUMENT', `encodeMetadata: ${message}`);
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

  const devices = checkDevices(desc.devices ?? [], seen, addrs.length);
  const chunkBytes = desc.stagingChunkBytes ?? 0;
  if (!Number.isInteger(chunkBytes) || chunkBytes < 0 || chunkBytes > 0xffffffff) throw invalid('stagingChunkBytes must be a u32');
  const fabricBytes = DEVICE_FABRIC_FIXED_BYTES + 8 * addrs.length;
  const deviceBytes = devices.reduce((n, d) => n + DEVICE_FIXED_BYTES + (d.ipc ? DEVICE_IPC_BYTES : 0) + (d.fabric ? fabricBytes : 0), 0);
  const regionBytes = REGION_FIXED_BYTES + 8 * addrs.length;
  const total =
    HEADER_BYTES +
    1 +
    nameBytes +
    1 +
    providerBytes +
    1 +
    railBytes +
    4 +
    checked.length * regionBytes +
    1 +
    hostBytes +
    HOST_FIXED_BYTES +
    4 +
    4 +
    deviceBytes +
    CRC_BYTES;
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
  off = buf.writeUInt32LE(chunkBytes, off);
  off = buf.writeUInt32LE(devices.length, off);
  for (const d of devices) {
    off = buf.writeUInt32LE(d.id, off);
    off = buf.writeBigUInt64LE(BigInt(d.length), off);
    off = buf.writeUInt8(DEVICE_KIND_CODES[d.kind], off);
    off = buf.writeUInt8((d.ipc ? DEVICE_FLAG_IPC : 0) | (d.fabric ? DEVICE_FLAG_FABRIC : 0), off);
    off = buf.writeUInt16LE(d.device, off);
    buf.set(d.token, off);
    off += DEVICE_TOKEN_BYTES;
    if (d.ipc) {
      buf.set(d.ipc.handle, off);
      off += IPC_HANDLE_BYTES;
      off = buf.writeBigUInt64LE(BigInt(d.ipc.offset), off);
    }
    if (d.fabric) {
      off = buf.writeUInt32LE(d.fabric.id, off);
      off = buf.writeBigUInt64LE(d.fabric.base, off);
      for (const key of d.fabric.keys) off = buf.writeBigUInt64LE(key, off);
    }
  }
  off = buf.writeUInt32LE(crc32(buf, 0, off), off);
  if (off !== total) throw new Error(`encodeMetadata internal error: wrote ${off} of ${total} bytes`);
  return buf;
}

/**
 * The device regions, checked; `seen` holds the host regions' ids, which a device region (and its fabric
 * registration) must not repeat; a fabric registration has a key per rail.
 */
function checkDevices(devices: readonly DeviceRegionDescription[], seen: Map<number, number>, rails: number): DeviceRegionDescription[] {
  if (!Array.isArray(devices)) throw invalid('devices must be an array');
  if (devices.length > METADATA_LIMITS.maxDeviceRegions) throw invalid(`at most ${METADATA_LIMITS.maxDeviceRegions} device regions fit in metadata`);
  const ids = new Set<number>();
  return devices.map((d: DeviceRegionDescription, i) => {
    const { id, length, kind, device, token, ipc, fabric } = d ?? ({} as DeviceRegionDescription);
    if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw invalid(`devices[${i}].id must be a u32`);
    if (seen.has(id) || ids.has(id)) throw invalid(`devices[${i}].id ${id} repeats another region's id`);
    ids.add(id);
    if (!Number.isSafeInteger(length) || length <= 0) throw invalid(`devices[${i}].length must be an integer in 1..2^53-1`);
    if (!Object.hasOwn(DEVICE_KIND_CODES, kind)) throw invalid(`devices[${i}].kind must be 'cuda' or 'stand-in'`);
    if (!Number.isInteger(device) || device < 0 || device > 0xffff) throw invalid(`devices[${i}].device must be a u16`);
    if (!(token instanceof Uint8Array) || token.length !== DEVICE_TOKEN_BYTES) throw invalid(`devices[${i}].token must be ${DEVICE_TOKEN_BYTES} bytes`);
    if (ipc !== undefined) {
      if (!(ipc.handle instanceof Uint8Array) || ipc.handle.length !== IPC_HANDLE_BYTES)
        throw invalid(`devices[${i}].ipc.handle must be ${IPC_HANDLE_BYTES} bytes`);
      if (!Number.isSafeInteger(ipc.offset) || ipc.offset < 0) throw invalid(`devices[${i}].ipc.offset must be an integer ≥ 0`);
    }
    const out: DeviceRegionDescription = { id, length, kind, device, token, ...(ipc ? { ipc: { handle: ipc.handle, offset: ipc.offset } } : {}) };
    if (fabric !== undefined) {
      const fid = fabric?.id;
      if (!Number.isInteger(fid) || fid < 0 || fid > 0xffffffff) throw invalid(`devices[${i}].fabric.id must be a u32`);
      if (seen.has(fid) || ids.has(fid)) throw invalid(`devices[${i}].fabric.id ${fid} repeats another region's id`);
      ids.add(fid);
      if (!Array.isArray(fabric.keys) || fabric.keys.length !== rails) throw invalid(`devices[${i}].fabric.keys must have one key per rail (${rails})`);
      const keys = fabric.keys.map((key, k) => checkU64(`devices[${i}].fabric.keys[${k}]`, key));
      out.fabric = { id: fid, base: checkU64(`devices[${i}].fabric.base`, fabric.base), keys };
    }
    return out;
  });
}
