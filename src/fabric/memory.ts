// Registered memory as the user sees it: an id, a length, and the bytes.
import { KvfError } from '../common/errors.js';

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
