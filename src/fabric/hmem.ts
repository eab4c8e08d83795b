// Whether an agent opens its rails with FI_HMEM, so that its provider registers device memory itself and the
// NIC reads and writes it directly (the `hmem` path: GPUDirect RDMA on efa). It needs a GPU, a libfabric built
// with CUDA that offers FI_HMEM for the provider (the EFA installer's, through KVF_LIBFABRIC; Ubuntu's is built
// without CUDA), and neither of the seed's settings forbidding it. libfabric registers through dma-buf itself
// where driver and NIC allow it (FI_HMEM_CUDA_USE_DMABUF), else through nvidia_peermem.
import { readFileSync } from 'node:fs';

import { gpuAddon } from './gpu-native.js';
import { hmemRefusal } from './gpu-path.js';

/** AgentOptions.hmem: 'auto' (default) where it can work, true to require it (fails to open without), false never. */
export type HmemOption = boolean | 'auto';

const cudaBuilds = new Map<string, boolean | undefined>();

/**
 * Whether a libfabric file names the CUDA driver entry points its CUDA support resolves (hmem_cuda.c dlopens
 * libcuda and looks up cuPointerGetAttribute; a build without CUDA has stubs and no such name). undefined when
 * the file cannot be read. Read once per file.
 */
export function mentionsCuda(library: string): boolean | undefined {
  if (!cudaBuilds.has(library)) {
    let found: boolean | undefined;
    try {
      const bytes = readFileSync(library);
      found = bytes.includes('cuPointerGetAttribute') || bytes.includes('cudaMemcpy');
    } catch {
      found = undefined;
    }
    cudaBuilds.set(library, found);
  }
  return cudaBuilds.get(library);
}

/** The `hmem` flag the addon opens `provider` with. */
export function openWithHmem(option: HmemOption | undefined, provider: string, env: NodeJS.ProcessEnv = process.env): boolean {
  if (option === true || option === false) return option;
  if (hmemRefusal(provider, env) !== '') return false;
  const cuda = gpuAddon.cudaStatus();
  if (!cuda.available || cuda.devices.length === 0) return false;
  const probe = gpuAddon.libfabricHmem(provider);
  return probe.hmem && probe.library !== undefined && mentionsCuda(probe.library) === true;
}
