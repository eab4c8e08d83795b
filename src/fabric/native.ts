// The transfer half of the addon's surface (agents, grants, host memory), declared once; the fabric code goes
// through these declarations. Loading the addon, and the engine's half, live in src/common/addon.ts.
import { addon as loaded, type Addon } from '../common/addon.js';

export interface NativeErrorObject {
  code: string;
  message: string;
  errno?: number;
  providerMessage?: string;
}

export type NativeEvent = { type: 'failed'; id: number; error: NativeErrorObject } | { type: 'notification'; from: string; data: Buffer } | { type: 'closed' };

export interface NativeAgentOptions {
  name: string;
  provider: string;
  node?: string;
  domain?: string;
  rails?: number;
  stripeThreshold?: number;
  expressMaxBytes?: number;
  busyPollUs?: number;
  /** Open the rails with FI_HMEM (registerDevice needs it). */
  hmem?: boolean;
}

export interface NativeAgentInfo {
  name: string;
  provider: string;
  fabric: string;
  domains: string[];
  addresses: Buffer[];
  virtAddr: boolean;
  mrMode: number;
  txDepth: number;
  maxMessageSize: number;
  maxNotificationBytes: number;
  /** The express lane's limit in effect (0: none, e.g. on shm). */
  expressMaxBytes: number;
  /** The rails were opened with FI_HMEM: device memory can be registered with them (registerDevice). */
  hmem: boolean;
  /** Where same-host peers find the region table (absent: none could be created). */
  regionTable?: RegionTableLocation;
}

/** An agent's region table (native/core/region_table.h): a memfd of its advertised regions, for same-host peers. */
export interface RegionTableLocation {
  fd: number;
  inode: bigint;
  /** 16 random bytes in the table's header. */
  nonce: Uint8Array;
}

export interface NativeRegion {
  id: number;
  length: number;
  base: bigint;
  keys: bigint[];
  /** Where same-host peers can map the region (shared memory from allocate()). */
  share?: { fd: number; inode: bigint; offset: number };
}

/** A new grant as the addon returns it (serialised by src/fabric/grants.ts). */
export interface NativeGrant {
  id: number;
  /** Its entry in the region table: id mod 2^18. */
  slot: number;
  /** Virtual address of the range's first byte. */
  base: bigint;
  /** Per rail: the fresh key of the grant's own registration. */
  keys: bigint[];
  share?: { fd: number; inode: bigint; offset: number };
}

/** A peer's grant as the reader hands it to the addon; access 1 = read, 2 = write. */
export interface NativeRemoteGrant {
  id: number;
  base: bigint;
  length: number;
  access: 1 | 2;
  keys: bigint[];
  share?: { fd: number; inode: bigint; offset: number };
  /** A peer's device memory registered through FI_HMEM: moved by the fabric alone (never copied by the CPU). */
  device?: boolean;
}

export declare class NativeAgent {
  constructor(options: NativeAgentOptions, onEvents: (events: NativeEvent[] | undefined, records: Float64Array) => void, records: Float64Array);
  info(): NativeAgentInfo;
  /** remoteAccess false: registered without FI_REMOTE_READ/WRITE and left out of regions(). Default true. */
  registerMemory(view: Uint8Array, remoteAccess?: boolean): number;
  /**
   * Device memory registered with every rail through FI_HMEM (the agent must have been opened with `hmem`): a
   * CUDA address on `cudaDevice`, or host bytes standing in for device memory. deregisterMemory(id) undoes it.
   */
  registerDevice(memory: bigint | Uint8Array, length: number, cudaDevice: number, remoteAccess: boolean): { id: number; base: bigint; keys: bigint[] };
  deregisterMemory(id: number): void;
  regions(): NativeRegion[];
  /**
   * `host`: the peer says it runs on this host as `pid`. The addon confirms its region table before touching
   * anything of that pid; then checks transfers against the table, and with `fastPath` copies directly when the
   * kernel allows it. Otherwise (and without `host`) the provider carries the bytes.
   */
  addPeer(
    name: string,
    virtAddr: boolean,
    addresses: Uint8Array[],
    regions: NativeRegion[],
    host?: { pid: number; fastPath: boolean; table?: RegionTableLocation },
  ): { id: number; path: 'fabric' | 'cma'; fastPathRefused?: string; mappedRegions: number; mapRefused?: string; tableRefused?: string };
  removePeer(id: number): void;
  /** Registers [offset, offset + length) of a region again, with fresh keys and FI_REMOTE_WRITE (write) or FI_REMOTE_READ only. */
  grant(region: number, offset: number, length: number, write: boolean): NativeGrant;
  /** Clears the grant's table entry, then closes its registrations; false when it was not live. */
  revoke(grant: number): boolean;
  liveGrants(): number;
  /** Adds a peer's grant as a remote region of that peer (id = the grant's id). */
  addGrant(peer: number, grant: NativeRemoteGrant): void;
  removeGrant(peer: number, grant: number): void;
  /** kind 0 = WRITE, 1 = READ; descriptors: 5 doubles each (localRegion, localOffset, remoteRegion, remoteOffset, length). */
  post(kind: 0 | 1, peer: number, descriptors: Float64Array, notification?: Uint8Array): number;
  /**
   * Completes what the express lanes have finished (polling up to spinUs while they have ops in flight, or a
   * single small transfer is in flight on a rail thread, and nothing completed), delivering events
   * synchronously; returns how many of those are still in flight.
   */
  reap(spinUs?: number): number;
  /** Validates descriptors once; returns a list id for postPrepared. */
  prepare(peer: number, descriptors: Float64Array): number;
  /** Posts a prepared list, whole or the descriptors at `indices`. */
  postPrepared(kind: 0 | 1, list: number, indices?: Uint32Array | null, notification?: Uint8Array): number;
  releasePrepared(list: number): void;
  /** A 1-byte READ on every rail; returns a transfer id. */
  warmup(peer: number): number;
  notify(peer: number, data: Uint8Array): number;
  close(timeoutMs: number): void;
  closeSync(): void;
  ref(): void;
  unref(): void;
}

export interface FabricAddon extends Addon {
  NativeAgent: typeof NativeAgent;
  /** shared: a memfd mapping same-host peers can map too (else private anonymous memory); 'auto': where it is hugepages (core/host_memory.h). */
  allocate(
    length: number,
    hugepages: boolean,
    requireHugepages: boolean,
    shared: boolean | 'auto',
  ): { buffer: ArrayBuffer; hugepages: boolean; shared: boolean };
  libfabricVersion(): string;
  /** The completion records' layout, defined once in native/binding/records.h (read by records.ts). */
  recordLayout: RecordLayout;
}

export interface RecordLayout {
  headerSize: number;
  stride: number;
  header: { count: number; eventsWaiting: number };
  fields: {
    id: number;
    bytes: number;
    durationNs: number;
    railsLow: number;
    railsHigh: number;
    postNs: number;
    providerPostNs: number;
    ops: number;
    flags: number;
  };
  flags: { cma: number; express: number; mapped: number };
}

// The same module that src/common/addon.ts loaded, seen with its transfer exports.
export const addon = loaded as FabricAddon;
