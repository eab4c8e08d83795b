// The seed's NIXL settings. kvfabric carries KV itself and honours NIXL_BACKEND (LIBFABRIC, or unset); the
// NIXL plugin only matters where NIXL itself runs next to kvfabric (the seed's "LIBFABRIC Plugin Not Found").
import { existsSync } from 'node:fs';
import { join } from 'node:path';

import { resolveBackend } from '../fabric/config.js';
import type { Context } from './context.js';
import type { CheckResult } from './types.js';

/** Where the seed's image has NIXL (relative to the root). */
export const SEED_NIXL_PLUGIN_DIR = 'opt/nvidia/nvda_nixl/lib/x86_64-linux-gnu/plugins';
const PLUGIN = 'libplugin_LIBFABRIC.so';

export function checkNixl(ctx: Context): CheckResult[] {
  const group = 'nixl';
  const out: CheckResult[] = [];
  try {
    const backend = resolveBackend(undefined, ctx.env);
    out.push({ group, name: 'NIXL_BACKEND', status: 'ok', detail: `${ctx.env.NIXL_BACKEND ? `${ctx.env.NIXL_BACKEND}: ` : 'unset: '}KV goes over ${backend}` });
  } catch (err) {
    out.push({ group, name: 'NIXL_BACKEND', status: 'fail', detail: (err as Error).message, fix: 'set NIXL_BACKEND=LIBFABRIC or unset it' });
  }

  const configured = ctx.env.NIXL_PLUGIN_DIR;
  const dir = configured ?? ctx.at(SEED_NIXL_PLUGIN_DIR);
  const plugin = join(dir, PLUGIN);
  if (existsSync(plugin)) out.push({ group, name: PLUGIN, status: 'ok', detail: plugin });
  else if (configured) {
    out.push({
      group,
      name: PLUGIN,
      status: 'fail',
      detail: `NIXL_PLUGIN_DIR=${configured} has no ${PLUGIN}`,
      fix: `point NIXL_PLUGIN_DIR at NIXL's plugins directory (the seed's image: /${SEED_NIXL_PLUGIN_DIR}), or unset it: kvfabric does not need NIXL`,
    });
  } else if (existsSync(dir)) {
    out.push({
      group,
      name: PLUGIN,
      status: 'warn',
      detail: `NIXL is installed (${dir}) without its LIBFABRIC plugin: NIXL there would use UCX`,
      fix: 'use an image whose NIXL was built with the LIBFABRIC plugin, or leave KV to kvfabric',
    });
  } else out.push({ group, name: PLUGIN, status: 'skip', detail: 'NIXL is not installed; kvfabric does not need it' });
  return out;
}
