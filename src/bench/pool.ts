// The bench's pool on either side: host memory (shared or hugepages as asked), or a device region ('cuda:N', or
// 'stand-in' host memory the agent treats as a device's), every page touched before anything is timed.
import type { Agent } from '../fabric/agent.js';
import type { DeviceRegion } from '../fabric/device-region.js';
import type { MemoryRegion } from '../fabric/memory.js';

export interface PoolSpec {
  pool: number;
  /** 'host', 'stand-in' or 'cuda:N'. */
  device: string;
  sharedPool: boolean | 'auto';
  hugepages: boolean;
}

export function allocatePool(agent: Agent, o: PoolSpec, fill: number): MemoryRegion | DeviceRegion {
  if (o.device === 'host') {
    const region = agent.allocate(o.pool, { shared: o.sharedPool, hugepages: o.hugepages });
    region.bytes.fill(fill);
    return region;
  }
  const region = agent.allocate(o.pool, { device: o.device });
  const slice = Buffer.alloc(Math.min(o.pool, 64 << 20), fill);
  for (let at = 0; at < o.pool; at += slice.length) region.copyFrom(slice.subarray(0, Math.min(slice.length, o.pool - at)), at);
  return region;
}
