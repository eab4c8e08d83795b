// Grants: per-request, revocable remote access to one range of a region, for one peer to READ or to WRITE
// (native/core/agent_grants.cc). The owner registers the range again with fresh keys and only that remote
// flag, and publishes it in its region table; the bytes it hands out say where the range is and how to reach
// it, and a reader adds them to the owner's RemotePeer. Revoking ends it on every path.
//
// Grant bytes, format v1, integers little-endian. They come from the network, so decodeGrant checks every
// field and throws KvfError KVF_ERR_BAD_METADATA for anything wrong:
//
//   offset  size  field
//   0       4     magic, ASCII "KVFG"
//   4       1     u8 version (GRANT_VERSION)
//   5       1     u8 access: 1 = read, 2 = write
//   6       1     u8 rail count (1..64)
//   7       1     u8 owner name length n (1..255)
//   8       4     u32 grant id (an id in the owner's region-id space)
//   12      4     u32 table slot: id mod 2^18, the grant's entry in the owner's region table
//   16      8     u64 base: the range's virtual address (used by FI_MR_VIRT_ADDR providers and on this host)
//   24      8     u64 length (1..2^53-1); base + length must not pass 2^64
//   32      16    owner digest: the random nonce of the owner's region table (zeros: it has none), which
//                 binds the grant to one agent instance, not only to a name
//   48      4     u32 share fd (0xffffffff: not shared memory), u64 share inode, u64 share offset
//   68      n     owner name (UTF-8)
//           8*r   u64 key per rail
//           4     u32 CRC-32 (zlib's) of every preceding byte
import { KvfError } from '../common/errors.js';
import { METADATA_LIMITS, crc32, type ShareDescription } from './metadata.js';

export const GRANT_VERSION = 1;
export type GrantAccess = 'read' | 'write';

/** The native region table's capacity (native/core/region_table.h): a grant's slot is its id modulo this. */
const TABLE_CAPACITY = 2 ** 18;
const MAGIC = [0x4b, 0x56, 0x46, 0x47] as const; // "KVFG"
const FIXED_BYTES = 68;
const CRC_BYTES = 4;
const NOT_SHARED = 0xffffffff;
const DIGEST_BYTES = 16;
const MAX_RAILS = METADATA_LIMITS.maxRails;
const U64_LIMIT = 1n << 64n;

export interface GrantDescription {
  id: number;
  access: GrantAccess;
  base: bigint;
  length: number;
  owner: string;
  /** 16 bytes: the owner's region-table nonce. */
  digest: Uint8Array;
  keys: bigint[];
  share?: ShareDescription;
}

/** Serialises a grant (the owner's side; its fields come from the addon, so they are not re-checked here). */
export function encodeGrant(g: GrantDescription): Uint8Array {
  const name = Buffer.from(g.owner, 'utf8');
  const total = FIXED_BYTES + name.length + 8 * g.keys.length + CRC_BYTES;
  const buf = Buffer.alloc(total);
  buf.set(MAGIC, 0);
  buf.writeUInt8(GRANT_VERSION, 4);
  buf.writeUInt8(g.access === 'read' ? 1 : 2, 5);
  buf.writeUInt8(g.keys.length, 6);
  buf.writeUInt8(name.length, 7);
  buf.writeUInt32LE(g.id, 8);
  buf.writeUInt32LE(g.id % TABLE_CAPACITY, 12);
  buf.writeBigUInt64LE(g.base, 16);
  buf.writeBigUInt64LE(BigInt(g.length), 24);
  buf.set(g.digest, 32);
  buf.writeUInt32LE(g.share?.fd ?? NOT_SHARED, 48);
  buf.writeBigUInt64LE(g.share?.inode ?? 0n, 52);
  buf.writeBigUInt64LE(BigInt(g.share?.offset ?? 0), 60);
  buf.set(name, FIXED_BYTES);
  let off = FIXED_BYTES + name.length;
  for (const key of g.keys) off = buf.writeBigUInt64LE(key, off);
  buf.writeUInt32LE(crc32(buf, 0, off), off);
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

function bad(message: string): KvfError {
  return new KvfError('KVF_ERR_BAD_METADATA', `bad grant: ${message}`);
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Parses grant bytes from the network; throws KvfError KVF_ERR_BAD_METADATA on any defect. */
export function decodeGrant(input: unknown): GrantDescription {
  if (!(input instanceof Uint8Array)) throw bad('expected a Uint8Array');
  const b = input;
  if (b.length < FIXED_BYTES + 1 + 8 + CRC_BYTES) throw bad(`${b.length} bytes is shorter than the smallest grant`);
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (MAGIC.some((m, i) => b[i] !== m)) throw bad('magic at offset 0 is not "KVFG"');
  if (b[4] !== GRANT_VERSION) throw bad(`unsupported grant version ${b[4]} (this build reads ${GRANT_VERSION})`);
  const accessByte = b[5]!;
  if (accessByte !== 1 && accessByte !== 2) throw bad(`access at offset 5 is ${accessByte}, expected 1 (read) or 2 (write)`);
  const rails = b[6]!;
  if (rails < 1 || rails > MAX_RAILS) throw bad(`rail count at offset 6 is ${rails}, expected 1..${MAX_RAILS}`);
  const nameLength = b[7]!;
  if (nameLength < 1) throw bad('owner name length at offset 7 is 0');
  const total = FIXED_BYTES + nameLength + 8 * rails + CRC_BYTES;
  if (b.length !== total) throw bad(`${b.length} bytes, but its name and ${rails} rail(s) make ${total}`);
  const end = total - CRC_BYTES;
  const crc = view.getUint32(end, true);
  if (crc !== crc32(b, 0, end)) throw bad(`CRC-32 at offset ${end} does not match the preceding bytes`);
  // The CRC catches damage in transit; a forged grant can carry a right CRC, so every field is checked.
  const id = view.getUint32(8, true);
  const slot = view.getUint32(12, true);
  if (slot !== id % TABLE_CAPACITY) throw bad(`table slot ${slot} is not grant ${id}'s (${id % TABLE_CAPACITY})`);
  const base = view.getBigUint64(16, true);
  const length = view.getBigUint64(24, true);
  if (length === 0n || length > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`length ${length} is outside 1..2^53-1`);
  if (base + length > U64_LIMIT) throw bad(`base 0x${base.toString(16)} + length ${length} wraps past 2^64`);
  const digest = new Uint8Array(b.subarray(32, 32 + DIGEST_BYTES));
  const fd = view.getUint32(48, true);
  const inode = view.getBigUint64(52, true);
  const shareOffset = view.getBigUint64(60, true);
  let owner: string;
  try {
    owner = utf8.decode(b.subarray(FIXED_BYTES, FIXED_BYTES + nameLength));
  } catch {
    throw bad(`owner name at offset ${FIXED_BYTES} is not valid UTF-8`);
  }
  const keys: bigint[] = [];
  for (let k = 0, off = FIXED_BYTES + nameLength; k < rails; k++, off += 8) keys.push(view.getBigUint64(off, true));
  const out: GrantDescription = { id, access: accessByte === 1 ? 'read' : 'write', base, length: Number(length), owner, digest, keys };
  if (fd !== NOT_SHARED) {
    if (fd > 0x7fffffff || shareOffset > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('share fd or offset out of range');
    out.share = { fd, inode, offset: Number(shareOffset) };
  } else if (inode !== 0n || shareOffset !== 0n) {
    throw bad('not shared, but carries a share inode or offset');
  }
  return out;
}

/** The owner's handle on one grant. */
export class Grant {
  #revoke: (grant: Grant) => void;
  #live = true;

  constructor(
    /** The grant's id in the owner's region-id space (the reader's `remote` region once added). */
    readonly id: number,
    /** The region it was carved from. */
    readonly regionId: number,
    /** Range within that region. */
    readonly offset: number,
    readonly length: number,
    readonly access: GrantAccess,
    /** What the reader needs: pass to remotePeer.addGrant() on the other side. */
    readonly bytes: Uint8Array,
    revoke: (grant: Grant) => void,
  ) {
    this.#revoke = revoke;
  }

  /** False once revoked, or ended by its region's deregistration or the agent's close. */
  get live(): boolean {
    return this.#live;
  }

  /**
   * Idempotent and synchronous: clears the grant's region-table entry first (same-host readers check it
   * before every copy), then closes its memory registrations (the provider refuses its keys from then on).
   * Operations already accepted by the provider or already past a reader's table check may still finish.
   */
  revoke(): void {
    if (!this.#live) return;
    this.#live = false;
    this.#revoke(this);
  }

  /** @internal its region was deregistered or the agent closed: the addon ended it already. */
  markEnded(): void {
    this.#live = false;
  }
}
