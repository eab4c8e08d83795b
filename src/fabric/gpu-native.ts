// The GPU half of the addon's surface (native/binding/cuda_wrap.cc), declared once; src/fabric/gpu.ts shapes it.
import { addon as loaded } from '../common/addon.js';

export interface NativeCudaDevice {
  index: number;
  name: string;
  /** Bytes of device memory. */
  totalMemory: number;
  /** "0000:3b:00.0" */
  pciBusId: string;
}

export interface NativeCudaStatus {
  /** The CUDA driver loaded (libcuda.so.1, or KVF_LIBCUDA) and sees at least one device. */
  available: boolean;
  /** Why not, when unavailable ("no CUDA driver: …", "no CUDA device"). */
  reason?: string;
  /** cuDriverGetVersion: 13000 for CUDA 13.0; absent when the driver did not load. */
  driverVersion?: number;
  devices: NativeCudaDevice[];
}

/** Device memory from cudaAllocate; this object owns it: cudaFree(ptr) frees it, or its garbage collection does. */
export interface NativeDeviceAllocation {
  readonly ptr: bigint;
  readonly bytes: number;
  readonly device: number;
}

export interface GpuAddon {
  cudaStatus(): NativeCudaStatus;
  /** KVF_ERR_NO_GPU without a driver or device, KVF_ERR_INVALID_ARGUMENT for a device that does not exist, KVF_ERR_ALLOC when out of memory. */
  cudaAllocate(device: number, bytes: number): NativeDeviceAllocation;
  /** Frees an allocation of cudaAllocate now; KVF_ERR_INVALID_ARGUMENT when ptr is not a live one. */
  cudaFree(ptr: bigint): void;
  /** Copies all of `bytes` to [ptr, ptr + bytes.length), after checking that range with cudaCheckRange. Synchronous. */
  cudaCopyToDevice(ptr: bigint, bytes: Uint8Array): void;
  /** Copies [ptr, ptr + bytes.length) into `bytes`, after checking that range. Synchronous. */
  cudaCopyFromDevice(ptr: bigint, bytes: Uint8Array): void;
  /**
   * The device allocation that holds [ptr, ptr + length): KVF_ERR_INVALID_ARGUMENT when ptr is not device memory
   * the driver knows, KVF_ERR_OUT_OF_RANGE when the range runs past the allocation's end.
   */
  cudaCheckRange(ptr: bigint, length: number): { device: number; base: bigint; size: number };
  /** A synchronous device-to-device copy of `length` bytes; both ranges are checked first (either may be an IPC mapping). */
  cudaCopyDeviceToDevice(dst: bigint, src: bigint, length: number): void;
  /** Queues a device-to-device copy on the destination device's copy stream; returns its number for cudaCopyFinished. */
  cudaCopyDeviceAsync(dst: bigint, src: bigint, length: number): number;
  /** Whether a queued copy is done (true once: it is then forgotten); throws the copy's error. */
  cudaCopyFinished(copy: number): boolean;
  /** The IPC handle of the allocation holding [ptr, ptr + length), ptr's offset in it and its device. */
  cudaIpcExport(ptr: bigint, length: number): { handle: Buffer; offset: number; device: number };
  /** Maps another process's allocation on `device`; returns the mapping's base. Close it with cudaIpcClose. */
  cudaIpcOpen(device: number, handle: Uint8Array): bigint;
  cudaIpcClose(device: number, mapped: bigint): void;
  /** Page-locks host memory (cuMemHostRegister) for fast device copies; cudaUnpinHost undoes it. */
  cudaPinHost(bytes: Uint8Array): void;
  cudaUnpinHost(bytes: Uint8Array): void;
  /** Whether the loaded libfabric offers `provider` with FI_HMEM (fi_getinfo), and which file it loaded. */
  libfabricHmem(provider: string): { hmem: boolean; library?: string; error?: string };
}

export const gpuAddon = loaded as unknown as GpuAddon;
