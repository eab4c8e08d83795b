// GPU memory, the foundation of issue 15: what the CUDA driver offers (cudaStatus), device names ('cuda:N'), and
// DeviceBuffer, device memory with host copies for tests and tools. The addon opens the driver at run time
// (native/core/cuda.cc); on a host without it every GPU call throws KVF_ERR_NO_GPU. Agents do not register
// device memory yet: that arrives with the GPU transfer paths (cuda-ipc, hmem, staged).
import { KvfError, fromNative } from '../common/errors.js';
import { gpuAddon, type NativeCudaStatus, type NativeDeviceAllocation } from './gpu-native.js';

export type CudaStatus = NativeCudaStatus;
export type CudaDevice = NativeCudaStatus['devices'][number];

/** The CUDA driver's version, its devices, or why there are none. Never throws. */
export function cudaStatus(): CudaStatus {
  return gpuAddon.cudaStatus();
}

/** 13000 → '13.0' */
export function formatDriverVersion(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

/** 'cuda:N' → N. Nothing else is a device name: KVF_ERR_INVALID_ARGUMENT. */
export function parseDevice(device: unknown): number {
  const m = typeof device === 'string' ? /^cuda:(0|[1-9][0-9]{0,3})$/.exec(device) : null;
  if (!m) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `device must be 'cuda:N' (e.g. 'cuda:0'), not ${JSON.stringify(device) ?? String(device)}`);
  return Number(m[1]);
}

/** KVF_ERR_NO_GPU when the driver or devices are missing, KVF_ERR_INVALID_ARGUMENT when `index` is not one of them. */
export function requireDevice(index: number): CudaDevice {
  const status = cudaStatus();
  if (!status.available) throw new KvfError('KVF_ERR_NO_GPU', `cuda:${index}: ${status.reason ?? 'no CUDA device'}`);
  const dev = status.devices.find((d) => d.index === index);
  if (!dev)
    throw new KvfError(
      'KVF_ERR_INVALID_ARGUMENT',
      `no device cuda:${index}: this host has ${status.devices.length} (cuda:0 to cuda:${status.devices.length - 1})`,
    );
  return dev;
}

/** Runs an addon call, its errors as KvfError. */
export function call<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw fromNative(err);
  }
}

function hostBytes(host: ArrayBufferView, what: string): Uint8Array {
  if (!ArrayBuffer.isView(host)) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `${what}: host memory must be a Buffer, typed array or DataView`);
  return host instanceof Uint8Array ? host : new Uint8Array(host.buffer, host.byteOffset, host.byteLength);
}

/**
 * Device memory allocated by kvfabric (cuMemAlloc on the device's primary context). It is freed by free(), or
 * when the buffer is garbage collected. The copies are synchronous and block the calling thread: they are for
 * filling and checking memory in tests and tools, not for moving KV.
 */
export class DeviceBuffer {
  #alloc: NativeDeviceAllocation | undefined;
  readonly device: string;
  readonly bytes: number;

  private constructor(alloc: NativeDeviceAllocation) {
    this.#alloc = alloc;
    this.device = `cuda:${alloc.device}`;
    this.bytes = alloc.bytes;
  }

  /** `bytes` of device memory on `device` ('cuda:N'). KVF_ERR_NO_GPU on a host without a CUDA driver or device. */
  static allocate(device: string, bytes: number): DeviceBuffer {
    const index = parseDevice(device);
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new KvfError(bytes === 0 ? 'KVF_ERR_ZERO_LENGTH' : 'KVF_ERR_INVALID_ARGUMENT', 'bytes must be a positive integer');
    }
    requireDevice(index);
    return new DeviceBuffer(call(() => gpuAddon.cudaAllocate(index, bytes)));
  }

  /** The device address of the first byte. KVF_ERR_CLOSED after free(). */
  get ptr(): bigint {
    return this.#live().ptr;
  }

  get freed(): boolean {
    return this.#alloc === undefined;
  }

  /** Copies all of `host` into the buffer at `offset`. */
  copyFrom(host: ArrayBufferView, offset = 0): void {
    const bytes = hostBytes(host, 'copyFrom');
    const ptr = this.#range(offset, bytes.byteLength, 'copyFrom');
    if (bytes.byteLength > 0) call(() => gpuAddon.cudaCopyToDevice(ptr, bytes));
  }

  /** Fills all of `host` from the buffer at `offset`. */
  copyTo(host: ArrayBufferView, offset = 0): void {
    const bytes = hostBytes(host, 'copyTo');
    const ptr = this.#range(offset, bytes.byteLength, 'copyTo');
    if (bytes.byteLength > 0) call(() => gpuAddon.cudaCopyFromDevice(ptr, bytes));
  }

  /** Frees the device memory now; later calls are no-ops, and every other use throws KVF_ERR_CLOSED. */
  free(): void {
    const alloc = this.#alloc;
    if (!alloc) return;
    this.#alloc = undefined;
    call(() => gpuAddon.cudaFree(alloc.ptr));
  }

  #live(): NativeDeviceAllocation {
    if (!this.#alloc) throw new KvfError('KVF_ERR_CLOSED', `device buffer on ${this.device} has been freed`);
    return this.#alloc;
  }

  #range(offset: number, length: number, what: string): bigint {
    const alloc = this.#live();
    if (!Number.isSafeInteger(offset) || offset < 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `${what}: offset must be an integer ≥ 0`);
    if (offset + length > this.bytes) {
      throw new KvfError('KVF_ERR_OUT_OF_RANGE', `${what}: [${offset}, ${offset + length}) runs past the buffer's ${this.bytes} bytes`);
    }
    return alloc.ptr + BigInt(offset);
  }
}
