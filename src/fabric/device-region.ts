// Device memory as a region of an agent: GPU memory (kind 'cuda'), or host memory standing in for it
// ('stand-in': the same transfer paths with memcpy where a GPU would copy, so that CI, which has no GPU,
// exercises chunking, pipelining and the remote-staging protocol with real providers). A device region is not
// registered with the rails (these providers cannot read GPU memory); transfers reach it through the owner's
// staging (staged-transfer.ts, stage-server.ts) or, on one host, through its CUDA IPC handle (cuda-ipc.ts).
import { randomBytes } from 'node:crypto';

import { KvfError } from '../common/errors.js';
import { DeviceBuffer, call } from './gpu.js';
import { gpuAddon } from './gpu-native.js';
import type { DeviceKind, DeviceRegionDescription, FabricRegistration } from './metadata.js';

/** Device region ids start here, above any id the addon gives host regions and grants. */
export const DEVICE_REGION_ID_BASE = 0x8000_0000;

export interface DeviceRegionOwner {
  deregisterDevice(region: DeviceRegion): void;
}

/** What backs a device region: a device pointer (cuda) or host bytes standing in for one. */
export type DeviceBacking = { kind: 'cuda'; device: number; ptr: bigint; owned?: DeviceBuffer } | { kind: 'stand-in'; bytes: Uint8Array };

export class DeviceRegion {
  #owner: DeviceRegionOwner;
  #backing: DeviceBacking;
  #registered = true;
  #ipc: { handle: Uint8Array; offset: number } | undefined;
  /** What a peer's staging request must present: the region's capability, sent only in metadata. */
  readonly token: Uint8Array = randomBytes(16);

  constructor(
    owner: DeviceRegionOwner,
    readonly id: number,
    readonly length: number,
    backing: DeviceBacking,
    /** Listed in this agent's metadata for peers to read and write. */
    readonly remoteAccess: boolean,
    /** The region as the agent's provider registered it (FI_HMEM), when it did. */
    readonly fabric?: FabricRegistration,
  ) {
    this.#owner = owner;
    this.#backing = backing;
    if (backing.kind === 'cuda' && remoteAccess) {
      // Not every device allocation can be exported (e.g. some VMM memory): then peers on this host stage too.
      try {
        const x = gpuAddon.cudaIpcExport(backing.ptr, length);
        this.#ipc = { handle: new Uint8Array(x.handle), offset: x.offset };
      } catch {
        this.#ipc = undefined;
      }
    }
  }

  get kind(): DeviceKind {
    return this.#backing.kind;
  }

  /** 'cuda:N', or 'stand-in'. */
  get device(): string {
    return this.#backing.kind === 'cuda' ? `cuda:${this.#backing.device}` : 'stand-in';
  }

  /** The device address of the first byte (cuda regions). */
  get ptr(): bigint | undefined {
    return this.#backing.kind === 'cuda' ? this.#backing.ptr : undefined;
  }

  get registered(): boolean {
    return this.#registered;
  }

  /** Copies `src` (host memory) into the region at `offset`. */
  copyFrom(src: Uint8Array, offset = 0): void {
    this.#check(offset, src.byteLength, 'copyFrom');
    if (src.byteLength === 0) return;
    const b = this.#backing;
    if (b.kind === 'stand-in') b.bytes.set(src, offset);
    else call(() => gpuAddon.cudaCopyToDevice(b.ptr + BigInt(offset), src));
  }

  /** Fills `dst` (host memory) from the region at `offset`. */
  copyTo(dst: Uint8Array, offset = 0): void {
    this.#check(offset, dst.byteLength, 'copyTo');
    if (dst.byteLength === 0) return;
    const b = this.#backing;
    if (b.kind === 'stand-in') dst.set(b.bytes.subarray(offset, offset + dst.byteLength));
    else call(() => gpuAddon.cudaCopyFromDevice(b.ptr + BigInt(offset), dst));
  }

  /** @internal the host bytes of a stand-in region's range (cuda-ipc copies into them directly). */
  standInBytes(offset: number, length: number): Uint8Array {
    this.#check(offset, length, 'copy');
    if (this.#backing.kind !== 'stand-in') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `device region ${this.id} is device memory`);
    return this.#backing.bytes.subarray(offset, offset + length);
  }

  /** Idempotent. The owner refuses while transfers use the region (KVF_ERR_BUSY). */
  deregister(): void {
    if (!this.#registered) return;
    this.#owner.deregisterDevice(this);
    this.markDeregistered();
  }

  /** @internal the owner's metadata entry. */
  describe(): DeviceRegionDescription {
    const b = this.#backing;
    return {
      id: this.id,
      length: this.length,
      kind: b.kind,
      device: b.kind === 'cuda' ? b.device : 0,
      token: this.token,
      ...(this.#ipc ? { ipc: this.#ipc } : {}),
      ...(this.fabric && this.remoteAccess ? { fabric: this.fabric } : {}),
    };
  }

  /** @internal frees what the agent allocated for the region (not memory the caller registered). */
  markDeregistered(): void {
    if (!this.#registered) return;
    this.#registered = false;
    if (this.#backing.kind === 'cuda') this.#backing.owned?.free();
  }

  #check(offset: number, length: number, what: string): void {
    if (!this.#registered) throw new KvfError('KVF_ERR_CLOSED', `${what}: device region ${this.id} is deregistered`);
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.length) {
      throw new KvfError('KVF_ERR_OUT_OF_RANGE', `${what}: [${offset}, ${offset + length}) is outside device region ${this.id} (${this.length} bytes)`);
    }
  }
}
