// Which path carries a transfer, from what each side's memory is and where the peer runs: the decision table
// of the GPU transfer paths (docs/design.md, "The transfer paths"), kept apart from the code that runs them so
// that every row is tested here, including the ones these machines cannot run (`hmem` needs a libfabric with
// CUDA and a NIC that reads GPU memory).

export type MemoryKind = 'host' | 'cuda';
export type PathName = 'fabric' | 'cma' | 'mapped' | 'cuda-ipc' | 'hmem' | 'staged';

export interface PathInputs {
  local: MemoryKind;
  remote: MemoryKind;
  /** The peer runs on this host (same kernel and pid namespace, region table confirmed). */
  sameHost: boolean;
  /** The same-host fast path is allowed (AgentOptions.fastPath, KVF_FAST_PATH). */
  fastPath: boolean;
  /** The remote host region lives in shared memory this process can map. */
  remoteShared: boolean;
  /** The remote cuda region came with a CUDA IPC handle. */
  remoteIpc: boolean;
  /** The local device region is registered with this agent's provider (FI_HMEM; device-side only). */
  localHmem: boolean;
  /** The remote device region came registered with the peer's provider (metadata v6; device-side only). */
  remoteHmem: boolean;
  provider: string;
  env?: NodeJS.ProcessEnv;
}

export interface PathChoice {
  path: PathName;
  /** Why not a faster path, when one was ruled out ('' when the first choice applies). */
  reason: string;
}

const truthy = (v: string | undefined): boolean => v !== undefined && /^(1|true|yes|on)$/i.test(v.trim());
const falsy = (v: string | undefined): boolean => v !== undefined && /^(0|false|no|off)$/i.test(v.trim());

/** Why the provider must not move device memory itself ('' when it may): the seed's two settings. */
export function hmemRefusal(provider: string, env: NodeJS.ProcessEnv = process.env): string {
  if (truthy(env.FI_HMEM_DISABLE_P2P)) return 'FI_HMEM_DISABLE_P2P=1 forbids the NIC from reading and writing device memory';
  if (provider.startsWith('efa') && falsy(env.FI_EFA_USE_DEVICE_RDMA)) return 'FI_EFA_USE_DEVICE_RDMA=0 turns off RDMA of device memory on efa';
  return '';
}

export function choosePath(i: PathInputs): PathChoice {
  const onHost = i.sameHost && i.fastPath;
  if (i.local === 'host' && i.remote === 'host') {
    if (onHost) return { path: i.remoteShared ? 'mapped' : 'cma', reason: '' };
    return { path: 'fabric', reason: i.sameHost ? 'the same-host fast path is off' : '' };
  }
  // Device memory on one side at least. On this host, the driver copies directly: a cuda remote through its
  // IPC handle, a host remote through its shared memory mapped here (cross-memory attach cannot reach a GPU).
  const reasons: string[] = [];
  if (onHost) {
    const reachable = i.remote === 'cuda' ? i.remoteIpc : i.remoteShared;
    if (reachable) return { path: 'cuda-ipc', reason: '' };
    reasons.push(i.remote === 'cuda' ? 'the peer sent no CUDA IPC handle for the region' : 'the peer’s host region is not in shared memory');
  } else if (i.sameHost) reasons.push('the same-host fast path is off');
  const localReady = i.local === 'host' || i.localHmem;
  const remoteReady = i.remote === 'host' || i.remoteHmem;
  if (!localReady) reasons.push(`${i.provider} does not register device memory here (the agent has no FI_HMEM with CUDA)`);
  if (!remoteReady) reasons.push('the peer did not register the region with its provider');
  if (localReady && remoteReady) {
    const refusal = hmemRefusal(i.provider, i.env);
    if (!refusal) return { path: 'hmem', reason: reasons.join('; ') };
    reasons.push(refusal);
  }
  return { path: 'staged', reason: reasons.join('; ') };
}
