// The cuda-ipc path: a peer on this host sent the CUDA IPC handle of its device region's allocation; the handle
// is opened here once per peer and region (the open costs ~100 ms), kept until the peer is forgotten or the
// agent closes, and every transfer is a driver copy between the mapping and the local side. The peer's claims
// (offset, length) are checked against the mapping the driver reports, so a lying peer gets a coded error.
import { KvfError } from '../common/errors.js';
import { DeviceRegion } from './device-region.js';
import { call } from './gpu.js';
import { gpuAddon } from './gpu-native.js';
import type { MemoryRegion } from './memory.js';
import type { DeviceRegionDescription } from './metadata.js';
import type { TransferOp } from './transfer-report.js';

interface Mapping {
  device: number;
  base: bigint;
}

export class CudaIpcCache {
  #open = new Map<string, Mapping>();

  /** The device address of the peer region's first byte, opening its handle on `device` the first time. */
  address(peer: string, region: DeviceRegionDescription, device: number): bigint {
    const k = `${peer}\u0000${region.id}`;
    let m = this.#open.get(k);
    if (!m) {
      if (!region.ipc) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `peer ${peer}'s device region ${region.id} has no IPC handle`);
      const handle = region.ipc.handle;
      m = { device, base: call(() => gpuAddon.cudaIpcOpen(device, handle)) };
      try {
        call(() => gpuAddon.cudaCheckRange(m!.base + BigInt(region.ipc!.offset), region.length));
      } catch (err) {
        call(() => gpuAddon.cudaIpcClose(device, m!.base));
        throw err;
      }
      this.#open.set(k, m);
    }
    return m.base + BigInt(region.ipc!.offset);
  }

  /** Closes the peer's mappings (it was forgotten or replaced). */
  forget(peer: string): void {
    for (const [k, m] of this.#open) {
      if (!k.startsWith(`${peer}\u0000`)) continue;
      this.#open.delete(k);
      closeQuietly(m);
    }
  }

  close(): void {
    for (const m of this.#open.values()) closeQuietly(m);
    this.#open.clear();
  }
}

/** One descriptor's copy between the local side and the peer's mapped range `remote` (its byte at remoteOffset). */
export function copyIpc(op: TransferOp, local: MemoryRegion | DeviceRegion, localOffset: number, remote: bigint, length: number): void {
  if (local instanceof DeviceRegion && local.ptr !== undefined) {
    const here = local.ptr + BigInt(localOffset);
    call(() => (op === 'READ' ? gpuAddon.cudaCopyDeviceToDevice(here, remote, length) : gpuAddon.cudaCopyDeviceToDevice(remote, here, length)));
    return;
  }
  // Host memory here (a host region, or host memory standing in for a device).
  const bytes = local instanceof DeviceRegion ? local.standInBytes(localOffset, length) : local.bytes.subarray(localOffset, localOffset + length);
  call(() => (op === 'READ' ? gpuAddon.cudaCopyFromDevice(remote, bytes) : gpuAddon.cudaCopyToDevice(remote, bytes)));
}

function closeQuietly(m: Mapping): void {
  try {
    gpuAddon.cudaIpcClose(m.device, m.base);
  } catch {
    // The driver refusing to unmap leaves nothing to do; the mapping goes with the process.
  }
}
