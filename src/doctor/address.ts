// Which address peers dial for this node's KV, as a worker started with this environment would bind it
// (KVF_FABRIC_ADDRESS, KVF_ADDRESS, FI_TCP_IFACE, else derived from KVF_LISTEN / KVF_ADVERTISE). A tcp agent on
// loopback behind a routable gRPC address is the failure issue 19 met on EKS: RPCs work, every KV pull fails.
import type { Context } from './context.js';
import type { CheckResult } from './types.js';

export async function checkAddress(ctx: Context): Promise<CheckResult[]> {
  const group = 'address';
  const name = 'fabric address';
  if (ctx.usesEfa()) return [{ group, name, status: 'skip', detail: 'efa: peers reach the NIC by its device address, not an IP' }];
  if (ctx.provider !== undefined && !ctx.provider.startsWith('tcp')) return [{ group, name, status: 'skip', detail: `${ctx.provider}: no IP address to bind` }];
  const { workerFabricAddress, loopbackWarning } = await import('../serve/fabric-address.js');
  const env = ctx.env;
  const listen = env.KVF_LISTEN || '127.0.0.1:0';
  const advertise = env.KVF_ADVERTISE || undefined;
  const choice = workerFabricAddress({ fabricAddress: env.KVF_FABRIC_ADDRESS || undefined, listen, advertise }, env);
  if (!ctx.openAgent) {
    return [
      { group, name, status: 'skip', detail: `agent probe disabled; a worker would bind ${choice.address ?? 'the agent default'} (from ${choice.source})` },
    ];
  }
  const [{ Agent }, { endpointsOf }] = await Promise.all([import('../fabric/agent.js'), import('../fabric/address.js')]);
  const agent = await Agent.create({
    name: `kvfabric-doctor-addr-${process.pid}`,
    backend: 'LIBFABRIC',
    logger: false,
    provider: ctx.provider ?? 'tcp',
    ...(choice.address !== undefined ? { address: choice.address } : {}),
  });
  const endpoints = endpointsOf(agent.provider, agent.info.addresses);
  await agent.close();
  const detail = `peers dial ${endpoints.join(', ') || 'an address that is not IP'} (from ${choice.source}); gRPC at ${advertise ?? listen}`;
  const warning = loopbackWarning(endpoints, advertise ?? listen);
  if (warning)
    return [
      {
        group,
        name,
        status: 'warn',
        detail: warning,
        fix: 'set KVF_FABRIC_ADDRESS to the pod IP (downward API status.podIP; the manifests do), or listen/advertise on it',
      },
    ];
  return [{ group, name, status: 'ok', detail }];
}
