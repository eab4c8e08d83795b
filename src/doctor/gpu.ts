// GPUs: device nodes (what the NVIDIA runtime gave the container), nvidia-smi when present, and — with efa —
// whether GPUDirect RDMA can work (nvidia-peermem loaded, or dma-buf, which needs no module).
import { existsSync } from 'node:fs';

import type { Context } from './context.js';
import { probe, which } from './context.js';
import type { CheckResult } from './types.js';

export async function checkGpu(ctx: Context): Promise<CheckResult[]> {
  const group = 'gpu';
  const gpus = ctx.gpus();
  if (gpus.length === 0) return [{ group, name: 'GPUs', status: 'skip', detail: `no ${ctx.dev('nvidia*')} device: KV stays in host memory` }];

  const out: CheckResult[] = [];
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
  if (ctx.usesEfa()) {
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
