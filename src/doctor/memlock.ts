// Locked-memory limit. EFA pins every registered region (the whole KV pool, bounce buffers), so a worker
// needs RLIMIT_MEMLOCK unlimited — or CAP_IPC_LOCK, which lifts the limit altogether: the seed's
// securityContext adds IPC_LOCK for exactly this. tcp and shm register without pinning, so elsewhere a low
// limit is only a warning.
import type { Context } from './context.js';
import { readText } from './context.js';
import type { CheckResult } from './types.js';

const CAP_IPC_LOCK = 14n;
/** Below this even tcp/shm setups with hugepage pools may run short. */
const WARN_BELOW = 64n << 20n;

export function checkMemlock(ctx: Context): CheckResult[] {
  const group = 'memlock';
  const name = 'locked memory';
  const limits = readText(ctx.proc('self', 'limits'));
  const line = limits?.split('\n').find((l) => l.startsWith('Max locked memory'));
  if (!line)
    return [{ group, name, status: 'warn', detail: `cannot read the limit from ${ctx.proc('self', 'limits')}`, fix: 'run `ulimit -l` in the container' }];
  const [soft] = line.slice('Max locked memory'.length).trim().split(/\s+/);
  const unlimited = soft === 'unlimited';
  const bytes = unlimited ? undefined : BigInt(soft ?? '0');
  const shown = unlimited ? 'unlimited' : `${bytes} bytes (ulimit -l ${bytes! / 1024n})`;

  const capEff = readText(ctx.proc('self', 'status'))?.match(/^CapEff:\s*([0-9a-f]+)/m)?.[1];
  const ipcLock = capEff !== undefined && ((BigInt(`0x${capEff}`) >> CAP_IPC_LOCK) & 1n) === 1n;
  if (unlimited) return [{ group, name, status: 'ok', detail: `${shown}${ipcLock ? ', and CAP_IPC_LOCK' : ''}` }];
  if (ipcLock) return [{ group, name, status: 'ok', detail: `${shown}, but CAP_IPC_LOCK lifts it` }];

  const fix =
    'add the IPC_LOCK capability (securityContext.capabilities.add, as kubernetes/libfabric/deployment.yaml does) or raise the limit to unlimited (ulimit -l unlimited; containerd/docker: --ulimit memlock=-1)';
  if (ctx.usesEfa()) return [{ group, name, status: 'fail', detail: `${shown} without CAP_IPC_LOCK: efa cannot pin the KV pool`, fix }];
  if (bytes! < WARN_BELOW) return [{ group, name, status: 'warn', detail: `${shown} without CAP_IPC_LOCK: enough for tcp/shm, not for efa`, fix }];
  return [{ group, name, status: 'ok', detail: `${shown} (provider ${ctx.provider ?? 'automatic'} does not pin memory)` }];
}
