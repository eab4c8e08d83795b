// EFA devices: the kernel's view (/sys/class/infiniband) and what the container was given (/dev/infiniband,
// which the EFA device plugin fills when a pod requests vpc.amazonaws.com/efa). The seed's "EFA Not
// Detected" steps (ibv_devices, ls /dev/infiniband), as checks.
import type { Context } from './context.js';
import { list } from './context.js';
import type { CheckResult } from './types.js';

const DEVICE_FIX =
  'request the device in the pod (resources.limits["vpc.amazonaws.com/efa"]) and mount hostPath /dev/infiniband ' +
  '(kubernetes/libfabric/deployment.yaml); the node needs the EFA driver and the EFA Kubernetes device plugin';

export function checkEfa(ctx: Context): CheckResult[] {
  const group = 'efa';
  const needed = ctx.usesEfa();
  const why = ctx.provider === undefined ? 'provider automatic' : `provider ${ctx.provider}`;
  const out: CheckResult[] = [];

  const sysfs = ctx.efaDevices();
  if (sysfs.length > 0) out.push({ group, name: 'EFA devices', status: 'ok', detail: `${sysfs.length}: ${sysfs.join(', ')}` });
  else if (needed)
    out.push({
      group,
      name: 'EFA devices',
      status: 'fail',
      detail: `no EFA device under ${ctx.sys('class', 'infiniband')} (${why})`,
      fix: `run on an EFA instance (p4d, p5, …); ${DEVICE_FIX}`,
    });
  else out.push({ group, name: 'EFA devices', status: 'skip', detail: `none, and not needed (${why})` });

  const nodes = list(ctx.dev('infiniband'));
  const uverbs = nodes.filter((n) => n.startsWith('uverbs'));
  const path = ctx.dev('infiniband');
  if (uverbs.length > 0) out.push({ group, name: '/dev/infiniband', status: 'ok', detail: `${path}: ${uverbs.join(', ')}` });
  else if (needed || sysfs.length > 0) {
    // Devices on the host but none in the container is the classic "EFA not detected": libfabric then
    // has no efa provider and an automatic choice silently falls back to tcp.
    const detail = nodes.length === 0 ? `${path} is missing or empty` : `${path} has no uverbs device (${nodes.join(', ')})`;
    out.push({ group, name: '/dev/infiniband', status: 'fail', detail, fix: DEVICE_FIX });
  } else out.push({ group, name: '/dev/infiniband', status: 'skip', detail: `absent, and not needed (${why})` });
  return out;
}
