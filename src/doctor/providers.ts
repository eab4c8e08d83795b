// Which libfabric kvfabric loads, which providers it offers, and which one a worker would get: an agent is
// opened exactly as `kvfabric prefill|decode` open theirs (as `kvfabric info` does), so "it fell back to
// tcp on an EFA node" shows here instead of as a slow deployment.
import { existsSync } from 'node:fs';

import type { Context } from './context.js';
import type { CheckResult } from './types.js';

const EFA_LIB = '/opt/amazon/efa/lib/libfabric.so.1';
const LIB_FIX = `on EFA nodes use the EFA installer's libfabric: KVF_LIBFABRIC=${EFA_LIB}`;

export async function checkProviders(ctx: Context): Promise<CheckResult[]> {
  const group = 'providers';
  const out: CheckResult[] = [];
  const lib = ctx.env.KVF_LIBFABRIC;
  if (lib) {
    if (lib.includes('/') && !existsSync(lib))
      out.push({
        group,
        name: 'KVF_LIBFABRIC',
        status: 'fail',
        detail: `${lib} does not exist`,
        fix: `point KVF_LIBFABRIC at an installed libfabric.so.1 (${EFA_LIB} on EFA nodes) or unset it`,
      });
    else out.push({ group, name: 'KVF_LIBFABRIC', status: 'ok', detail: lib });
  } else if (ctx.usesEfa()) {
    out.push({
      group,
      name: 'KVF_LIBFABRIC',
      status: 'warn',
      detail: 'unset: the system libfabric.so.1 is loaded, and distribution builds often lack efa',
      fix: LIB_FIX,
    });
  } else out.push({ group, name: 'KVF_LIBFABRIC', status: 'ok', detail: 'unset: the system libfabric.so.1' });

  const fi = await ctx.fiInfo();
  if (!fi.path) {
    out.push({
      group,
      name: 'fi_info',
      status: 'warn',
      detail: 'fi_info not found: cannot list providers (the agent check below still tells)',
      fix: 'install libfabric-bin, or use the EFA installer (/opt/amazon/efa/bin/fi_info)',
    });
  } else if (fi.providers.length === 0) {
    out.push({
      group,
      name: 'fi_info',
      status: 'fail',
      detail: `${fi.path} -l listed no provider${fi.error ? `: ${fi.error}` : ''}`,
      fix: 'reinstall libfabric (libfabric1 / libfabric-bin, or the EFA installer)',
    });
  } else {
    const core = fi.providers.filter((p) => !p.startsWith('ofi_hook'));
    const detail = `${fi.path}: ${core.join(', ')}${fi.matchesLoaded ? '' : ' (the system fi_info; KVF_LIBFABRIC may be another build)'}`;
    if (ctx.usesEfa() && !fi.providers.includes('efa')) {
      out.push({
        group,
        name: 'efa provider',
        status: fi.matchesLoaded ? 'fail' : 'warn',
        detail: `efa is not among the providers of ${detail}`,
        fix: LIB_FIX,
      });
    } else out.push({ group, name: 'providers', status: 'ok', detail });
  }

  if (ctx.providerError) {
    out.push({ group, name: 'selected provider', status: 'fail', detail: ctx.providerError, fix: 'set FI_PROVIDER=efa|tcp|shm' });
  } else if (!ctx.openAgent) {
    out.push({ group, name: 'selected provider', status: 'skip', detail: 'agent probe disabled' });
  } else {
    out.push(await openAgent(ctx));
  }
  return out;
}

async function openAgent(ctx: Context): Promise<CheckResult> {
  const name = 'selected provider';
  const group = 'providers';
  try {
    // Imported here so that a missing or broken addon is reported as a finding, not a crash of the doctor.
    const { Agent } = await import('../fabric/agent.js');
    // backend is pinned: a wrong NIXL_BACKEND is the nixl check's finding, not this one's.
    const agent = await Agent.create({
      name: `kvfabric-doctor-${process.pid}`,
      backend: 'LIBFABRIC',
      logger: false,
      ...(ctx.provider ? { provider: ctx.provider } : {}),
    });
    const detail = `backend ${agent.backend}, provider ${agent.provider}, fabric ${agent.fabric}, ${agent.rails} rail(s) on ${agent.domains.join(', ')}`;
    const provider = agent.provider;
    await agent.close();
    if (ctx.provider === undefined && ctx.efaDevices().length > 0 && provider !== 'efa') {
      // The seed's failure mode: EFA in the node, KV over TCP, and nothing says so.
      return {
        group,
        name,
        status: 'fail',
        detail: `EFA devices are present but the automatic choice fell back to ${provider}: ${detail}`,
        fix: `${LIB_FIX}; set FI_PROVIDER=efa so that a missing efa is an error, not a fallback`,
      };
    }
    return { group, name, status: 'ok', detail };
  } catch (err) {
    const e = err as Error & { code?: string };
    const detail = `${e.code ? `${e.code}: ` : ''}${e.message}`;
    let fix = 'check FI_PROVIDER and KVF_LIBFABRIC (`kvfabric info` opens the same agent)';
    if (ctx.provider === 'efa') fix = `${LIB_FIX}; the pod needs vpc.amazonaws.com/efa and /dev/infiniband (see the efa checks)`;
    return { group, name, status: 'fail', detail, fix };
  }
}
