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

/**
 * One descriptor's copy between the local side and the peer's mapped range `remote`. Device to device, the copy
 * is queued on the device's copy stream and its number returned (await them with copiesDone): the event loop
 * goes on while the GPU copies, so transfers in flight overlap. With host memory here, it is done on return.
 */
export function copyIpc(op: TransferOp, local: MemoryRegion | DeviceRegion, localOffset: number, remote: bigint, length: number): number | undefined {
  if (local instanceof DeviceRegion && local.ptr !== undefined) {
    const here = local.ptr + BigInt(localOffset);
    return call(() => (op === 'READ' ? gpuAddon.cudaCopyDeviceAsync(here, remote, length) : gpuAddon.cudaCopyDeviceAsync(remote, here, length)));
  }
  // Host memory here (a host region, or host memory standing in for a device).
  const bytes = local instanceof DeviceRegion ? local.standInBytes(localOffset, length) : local.bytes.subarray(localOffset, localOffset + length);
  call(() => (op === 'READ' ? gpuAddon.cudaCopyFromDevice(remote, bytes) : gpuAddon.cudaCopyToDevice(remote, bytes)));
  return undefined;
}

/** Resolves once every queued copy is done (polled between turns of the event loop); KVF_ERR_TIMEOUT at `deadline`. */
export async function copiesDone(copies: readonly number[], deadline: number): Promise<void> {
  // Each device's stream runs its copies in order, so the last is polled first; each is forgotten once done.
  const pending = [...copies];
  while (pending.length > 0) {
    if (call(() => gpuAddon.cudaCopyFinished(pending[pending.length - 1]!))) {
      pending.pop();
      continue;
    }
    if (performance.now() > deadline) throw new KvfError('KVF_ERR_TIMEOUT', `device copies did not finish by the transfer's deadline`);
    await new Promise((resolve) => setImmediate(resolve));
  }
}

function closeQuietly(m: Mapping): void {
  try {
    gpuAddon.cudaIpcClose(m.device, m.base);
  } catch {
    // The driver refusing to unmap leaves nothing to do; the mapping goes with the process.
  }
}
