// Registered memory as the user sees it (an id, a length, and the bytes), and the addon's allocation behind Agent.allocate.
import { parseDevice, requireDevice } from './gpu.js';
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
   * 'cuda:N' asks for device memory. Not in this version: agents register host memory only until the GPU
   * transfer paths (cuda-ipc, staged) arrive; KVF_ERR_NO_GPU on a host without a CUDA driver or device,
   * KVF_ERR_INVALID_ARGUMENT elsewhere. DeviceBuffer allocates and fills device memory meanwhile.
   */
  device?: string;
}

const ALLOCATE_OPTION_KEYS = ['hugepages', 'remoteAccess', 'shared', 'device'] as const satisfies readonly (keyof AllocateOptions)[];

/** Checks Agent.allocate's arguments and allocates the memory in the addon; the caller registers it. */
export function allocateBytes(length: number, options: AllocateOptions): { bytes: Uint8Array; hugepages: boolean; shared: boolean } {
  checkOptionKeys(options, ALLOCATE_OPTION_KEYS, 'allocate');
  if (options.device !== undefined) {
    requireDevice(parseDevice(options.device));
    throw new KvfError(
      'KVF_ERR_INVALID_ARGUMENT',
      `allocate({ device: '${options.device}' }): agents register host memory only in this version; device regions arrive with the GPU transfer paths (cuda-ipc, staged). DeviceBuffer allocates and fills device memory meanwhile.`,
    );
  }
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
