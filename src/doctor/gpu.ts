// GPUs: device nodes (what the NVIDIA runtime gave the container), nvidia-smi when present, the CUDA driver as
// kvfabric loads it (libcuda.so.1 or KVF_LIBCUDA: version and devices, or why none), whether the loaded libfabric
// offers FI_HMEM with CUDA for the provider a worker would use, and — with efa — whether GPUDirect RDMA can work
// (nvidia-peermem loaded, or dma-buf, which needs no module).
import { existsSync } from 'node:fs';

import { mentionsCuda } from '../fabric/hmem.js';
import type { Context } from './context.js';
import { probe, which } from './context.js';
import type { CheckResult, CudaProbe } from './types.js';

const GIB = 1024 ** 3;

export async function checkGpu(ctx: Context): Promise<CheckResult[]> {
  const group = 'gpu';
  const gpus = ctx.gpus();
  const cuda = await ctx.cuda();
  const out: CheckResult[] = [];
  if (gpus.length === 0) out.push({ group, name: 'GPUs', status: 'skip', detail: `no ${ctx.dev('nvidia*')} device: KV stays in host memory` });
  else {
    const smi = which('nvidia-smi', ctx.env);
    if (!smi) out.push({ group, name: 'GPUs', status: 'ok', detail: `${gpus.length}: ${gpus.join(', ')} (nvidia-smi not on PATH)` });
    else {
      const r = await probe(smi, ['-L'], ctx.env);
      const names = r.stdout.split('\n').filter((l) => l.startsWith('GPU '));
      if (r.ok)
        out.push({ group, name: 'GPUs', status: 'ok', detail: `${gpus.length} device node(s); ${names.length ? names.join('; ') : 'nvidia-smi listed none'}` });
      else
        out.push({
          group,
          name: 'GPUs',
          status: 'warn',
          detail: `${gpus.length} device node(s) but nvidia-smi failed: ${r.stderr.trim().split('\n').pop() ?? ''}`,
          fix: 'check the NVIDIA driver and container runtime (the GPU operator)',
        });
    }
  }
  if (cuda) out.push(...checkCuda(ctx, cuda, gpus.length > 0));
  if (gpus.length > 0 && ctx.usesEfa()) {
    const peermem = existsSync(ctx.sys('module', 'nvidia_peermem'));
    out.push(
      peermem
        ? { group, name: 'GPUDirect RDMA', status: 'ok', detail: 'nvidia_peermem loaded' }
        : {
            group,
            name: 'GPUDirect RDMA',
            status: 'warn',
            detail: 'nvidia_peermem not loaded: GPU memory can be registered with efa only through dma-buf (open GPU kernel module, libfabric >= 1.18)',
            fix: 'load nvidia-peermem on the node (the GPU operator: driver.rdma.enabled=true) or use the open kernel module',
          },
    );
  }
  return out;
}

/** The CUDA driver row, and with a driver, the FI_HMEM row. */
function checkCuda(ctx: Context, cuda: CudaProbe, deviceNodes: boolean): CheckResult[] {
  const group = 'gpu';
  const status = cuda.status();
  const out: CheckResult[] = [];
  if (!status.available) {
    const reason = status.reason ?? 'no CUDA device';
    out.push(
      deviceNodes
        ? {
            group,
            name: 'CUDA driver',
            status: 'warn',
            detail: `GPU device nodes, but ${reason}: GPU memory calls fail with KVF_ERR_NO_GPU`,
            fix: 'install the NVIDIA driver (libcuda.so.1) in the image or run with the NVIDIA container runtime; KVF_LIBCUDA names another libcuda',
          }
        : { group, name: 'CUDA driver', status: 'skip', detail: `${reason}: GPU memory calls fail with KVF_ERR_NO_GPU` },
    );
    return out;
  }
  const version = status.driverVersion ? `CUDA ${Math.floor(status.driverVersion / 1000)}.${Math.floor((status.driverVersion % 1000) / 10)}` : 'CUDA';
  const devices = status.devices.map((d) => `cuda:${d.index} ${d.name} (${(d.totalMemory / GIB).toFixed(1)} GiB, ${d.pciBusId})`);
  out.push({ group, name: 'CUDA driver', status: 'ok', detail: `${version}, ${status.devices.length} device(s): ${devices.join('; ')}` });

  const provider = ctx.provider ?? (ctx.usesEfa() ? 'efa' : 'tcp;ofi_rxm');
  const h = cuda.hmem(provider);
  const efa = provider === 'efa' || provider.startsWith('efa;');
  const staged = 'device memory will be staged through pinned host memory';
  if (!h.hmem) {
    out.push({
      group,
      name: 'FI_HMEM',
      status: efa ? 'warn' : 'skip',
      detail: `${provider} offers no FI_HMEM in ${h.library ?? 'the loaded libfabric'}${h.error ? ` (${h.error})` : ''}: ${staged}`,
      ...(efa ? { fix: "load the EFA installer's libfabric, built with CUDA: KVF_LIBFABRIC=/opt/amazon/efa/lib/libfabric.so.1" } : {}),
    });
    return out;
  }
  const withCuda = h.library ? mentionsCuda(h.library) : undefined;
  if (withCuda === false) {
    out.push({
      group,
      name: 'FI_HMEM',
      status: efa ? 'warn' : 'skip',
      detail: `${provider} offers FI_HMEM, but ${h.library} shows no CUDA support (built without it: FI_HMEM is host memory only there): ${staged}`,
      ...(efa ? { fix: "load a libfabric built with CUDA, e.g. the EFA installer's: KVF_LIBFABRIC=/opt/amazon/efa/lib/libfabric.so.1" } : {}),
    });
  } else {
    const which = h.library ? `${h.library}${withCuda ? ', built with CUDA' : ''}` : 'the loaded libfabric';
    out.push({ group, name: 'FI_HMEM', status: 'ok', detail: `${provider} offers FI_HMEM (${which}): device memory can be registered with the provider` });
  }
  return out;
}
