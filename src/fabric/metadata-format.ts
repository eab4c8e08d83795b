// The agent metadata blob's format: its layout and limits, the descriptions it carries, and the CRC-32 that
// seals it. The codec (metadata-encode.ts, metadata-decode.ts) is written against these definitions;
// metadata.ts is the module the rest of kvfabric imports.
//
// Format v6, all integers little-endian:
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
//           4     u32 stagingChunkBytes: the most one staging request of this agent's device regions moves
//           4     u32 deviceRegionCount (0..65_536)
//                 per device region: u32 id, u64 length (1..2^53-1), u8 kind (1 cuda, 2 stand-in),
//                   u8 flags (bit0: an IPC handle follows, bit1: a fabric registration follows),
//                   u16 device ordinal (0 for stand-in), 16-byte stage token,
//                   [64-byte CUDA IPC handle, u64 offset of the region in its allocation],
//                   [u32 fabric region id, u64 base, railCount x u64 key]
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
// v5 added device regions (GPU memory, or host memory standing in for it): not registered with the rails, so
// not in the region list; a peer moves them through the owner (the staged path asks the owner, presenting the
// region's token, to copy through a pinned chunk) or, on one host, through the CUDA IPC handle.
//
// v6 added a device region's fabric registration (FI_HMEM): where the owner's provider registered the device
// memory itself, a peer's NIC reads and writes it directly (the `hmem` path), under its own region id.
//
// A reader accepts only the version it was built for: a layout change must bump METADATA_VERSION,
// and an older peer then reports "unsupported metadata version N" instead of misreading fields.

export const METADATA_VERSION = 6;

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

export type DeviceKind = 'cuda' | 'stand-in';

/** A device region a peer may READ and WRITE through the GPU paths (device-region.ts). */
export interface DeviceRegionDescription {
  /** Region id (u32), distinct from every host region's id. */
  id: number;
  length: number;
  kind: DeviceKind;
  /** CUDA device ordinal (0 for stand-in). */
  device: number;
  /** What a staging request must present (16 bytes): region ids are small integers, tokens are not guessable. */
  token: Uint8Array;
  /** The allocation's CUDA IPC handle (64 bytes) and the region's offset in it, for peers on this host. */
  ipc?: { handle: Uint8Array; offset: number };
  /** The region registered with the owner's rails through FI_HMEM (v6): its fabric id, base and a key per rail. */
  fabric?: FabricRegistration;
}

/** A device region as the owner's provider registered it: named like a host region in fabric operations. */
export interface FabricRegistration {
  /** u32, distinct from every other region's id. */
  id: number;
  base: bigint;
  keys: bigint[];
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
  /** Device regions (v5); default none. */
  devices?: DeviceRegionDescription[];
  /** The most one staging request of those regions may move (the owner's chunk size; u32, 0 = none). */
  stagingChunkBytes?: number;
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

export const TABLE_NONCE_BYTES = 16;

/** Limits of format v6. */
export const METADATA_LIMITS = Object.freeze({
  maxStringBytes: 255,
  maxRails: 64,
  maxRailAddressBytes: 255,
  maxRegions: 1_048_576,
  maxDeviceRegions: 65_536,
});

export const MAGIC = [0x4b, 0x56, 0x46, 0x4d] as const; // "KVFM"
export const FLAG_VIRT_ADDR = 0x0001;
/** magic + version + flags + total length */
export const HEADER_BYTES = 12;
export const CRC_BYTES = 4;
/** The host section's fixed part after the host id: u32 pid, u32 table fd, u64 table inode, the nonce. */
export const HOST_FIXED_BYTES = 4 + 4 + 8 + TABLE_NONCE_BYTES;
/** Smallest well-formed blob: 1-byte name, 1-byte provider, one 1-byte rail, no regions, no host id, no device regions. */
export const MIN_BLOB_BYTES = HEADER_BYTES + (1 + 1) + (1 + 1) + 1 + (1 + 1) + 4 + 1 + HOST_FIXED_BYTES + 4 + 4 + CRC_BYTES;
/** A region's fixed part: u32 id, u64 length, u64 base, u32 share fd, u64 share inode, u64 share offset (the keys follow). */
export const REGION_FIXED_BYTES = 4 + 8 + 8 + 4 + 8 + 8;
export const NOT_SHARED = 0xffffffff;
/** A device region's fixed part: u32 id, u64 length, u8 kind, u8 flags, u16 device, the token. */
export const DEVICE_FIXED_BYTES = 4 + 8 + 1 + 1 + 2 + 16;
export const DEVICE_TOKEN_BYTES = 16;
export const IPC_HANDLE_BYTES = 64;
/** The IPC part of a device region: the handle and a u64 offset. */
export const DEVICE_IPC_BYTES = IPC_HANDLE_BYTES + 8;
export const DEVICE_KIND_CODES: Readonly<Record<DeviceKind, number>> = Object.freeze({ cuda: 1, 'stand-in': 2 });
export const DEVICE_FLAG_IPC = 0x01;
export const DEVICE_FLAG_FABRIC = 0x02;
/** The fabric part of a device region, before its keys: u32 id, u64 base. */
export const DEVICE_FABRIC_FIXED_BYTES = 4 + 8;
export const U64_LIMIT = 1n << 64n;

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

/** `0x`-prefixed hex, zero-padded to `digits`, for the codec's messages. */
export function hex(value: number | bigint, digits = 0): string {
  return `0x${value.toString(16).padStart(digits, '0')}`;
}
