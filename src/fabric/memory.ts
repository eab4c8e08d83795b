// Registered memory as the user sees it (an id, a length, and the bytes), and the addon's allocation behind Agent.allocate.
import { checkOptionKeys } from './options.js';
import { KvfError } from '../common/errors.js';
import { addon } from './native.js';

export type MemoryInput = ArrayBufferView | ArrayBuffer | SharedArrayBuffer;

/** A byte view over any buffer kind the agent can register; rejects detached buffers up front. */
export function toBytes(mem: MemoryInput): Uint8Array {
  if (mem instanceof Uint8Array) return mem;
  const buffer = ArrayBuffer.isView(mem) ? mem.buffer : mem;
  if (buffer instanceof ArrayBuffer && isDetached(buffer)) {
    throw new KvfError('KVF_ERR_DETACHED', 'cannot register a detached ArrayBuffer');
  }
  if (ArrayBuffer.isView(mem)) return new Uint8Array(mem.buffer, mem.byteOffset, mem.byteLength);
  if (mem instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && mem instanceof SharedArrayBuffer)) {
    return new Uint8Array(mem);
  }
  throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'memory must be a Buffer, typed array, DataView, ArrayBuffer or SharedArrayBuffer');
}

/** Agent.allocate's options (documented there). */
export interface AllocateOptions {
  /** Reserved 2 MiB hugepages: true = if available, 'require' = or fail. Default false. */
  hugepages?: boolean | 'require';
  /** Listed in this agent's metadata for peers to read and write. Default true. */
  remoteAccess?: boolean;
  /** Memory same-host peers can map (see Agent.allocate()). Default 'auto'. */
  shared?: boolean | 'auto';
  /**
   * 'cuda:N': device memory (a DeviceRegion; KVF_ERR_NO_GPU on a host without a CUDA driver or device).
   * 'stand-in': host memory that transfers treat as device memory (the staged path, with memcpy where a GPU
   * would copy), so the GPU paths run on machines without one. `hugepages` and `shared` do not apply.
   */
  device?: string;
}

/** Device memory someone else owns, for Agent.registerMemory. */
export interface DeviceMemoryInput {
  ptr: bigint;
  length: number;
  /** 'cuda:N' */
  device: string;
}

export function isDeviceMemoryInput(m: unknown): m is DeviceMemoryInput {
  return typeof m === 'object' && m !== null && !ArrayBuffer.isView(m) && typeof (m as { ptr?: unknown }).ptr === 'bigint';
}

const ALLOCATE_OPTION_KEYS = ['hugepages', 'remoteAccess', 'shared', 'device'] as const satisfies readonly (keyof AllocateOptions)[];

/** Checks Agent.allocate's options; with a device, only remoteAccess goes with it. */
export function checkAllocateOptions(options: AllocateOptions): void {
  checkOptionKeys(options, ALLOCATE_OPTION_KEYS, 'allocate');
  if (options.device !== undefined && (options.hugepages !== undefined || options.shared !== undefined)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'allocate: hugepages and shared apply to host memory, not to a device region');
  }
}

/** Checks Agent.allocate's arguments and allocates host memory in the addon; the caller registers it. */
export function allocateBytes(length: number, options: AllocateOptions): { bytes: Uint8Array; hugepages: boolean; shared: boolean } {
  checkAllocateOptions(options);
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw new KvfError(length === 0 ? 'KVF_ERR_ZERO_LENGTH' : 'KVF_ERR_INVALID_ARGUMENT', 'length must be a positive integer');
  }
  const huge = options.hugepages ?? false;
  const wantShared = options.shared ?? 'auto';
  if (wantShared !== true && wantShared !== false && wantShared !== 'auto') {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', "options.shared must be true, false or 'auto'");
  }
  const { buffer, hugepages, shared } = addon.allocate(length, huge !== false, huge === 'require', wantShared);
  return { bytes: new Uint8Array(buffer), hugepages, shared };
}

// Node 20 has no ArrayBuffer.prototype.detached; a detached buffer is the one that cannot be sliced.
function isDetached(buffer: ArrayBuffer): boolean {
  if (buffer.byteLength > 0) return false;
  try {
    buffer.slice(0);
    return false;
  } catch {
    return true;
  }
}

export interface RegionOwner {
  deregisterRegion(region: MemoryRegion): void;
}

export class MemoryRegion {
  #owner: RegionOwner;
  #registered = true;

  constructor(
    owner: RegionOwner,
    /** Region id, the `local` (or, at a peer, `remote`) region of a descriptor. */
    readonly id: number,
    /** The registered bytes. */
    readonly bytes: Uint8Array,
    /** Whether the region is listed in this agent's metadata for peers to read and write. */
    readonly remoteAccess: boolean,
    /** True when the memory was allocated by the addon on 2 MiB hugepages. */
    readonly hugepages = false,
    /** True when the memory is shared (allocate({ shared })): same-host peers map it and copy with memcpy. */
    readonly shared = false,
  ) {
    this.#owner = owner;
  }

  get length(): number {
    return this.bytes.byteLength;
  }

  get registered(): boolean {
    return this.#registered;
  }

  /** Idempotent. Throws KVF_ERR_BUSY while transfers use the region. */
  deregister(): void {
    if (!this.#registered) return;
    this.#owner.deregisterRegion(this);
    this.#registered = false;
  }

  /** @internal the agent marks regions gone when it closes. */
  markDeregistered(): void {
    this.#registered = false;
  }
}
