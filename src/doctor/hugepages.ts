// 2 MiB hugepages: the KV pool goes on them with --hugepages (KVF_HUGEPAGES), and the efa provider uses them
// for its own buffers when it can (the seed reserves hugepages-2Mi: 5120Mi for each worker).
import type { Context } from './context.js';
import { parseBool, readText } from './context.js';
import type { CheckResult } from './types.js';

export function checkHugepages(ctx: Context): CheckResult[] {
  const group = 'hugepages';
  const name = 'hugepages-2Mi';
  const meminfo = readText(ctx.proc('meminfo')) ?? '';
  const field = (key: string): number | undefined => {
    const m = meminfo.match(new RegExp(`^${key}:\\s*(\\d+)`, 'm'));
    return m ? Number(m[1]) : undefined;
  };
  // sysfs has per-size pools; /proc/meminfo only the default size (which is 2 MiB on x86-64 unless changed).
  const sysDir = ctx.sys('kernel', 'mm', 'hugepages', 'hugepages-2048kB');
  const sysTotal = readText(`${sysDir}/nr_hugepages`);
  const sysFree = readText(`${sysDir}/free_hugepages`);
  let total: number | undefined;
  let free: number | undefined;
  if (sysTotal !== undefined && sysFree !== undefined) {
    total = Number(sysTotal.trim());
    free = Number(sysFree.trim());
  } else if (field('Hugepagesize') === 2048) {
    total = field('HugePages_Total');
    free = field('HugePages_Free');
  }
  if (total === undefined || free === undefined) {
    return [
      {
        group,
        name,
        status: 'warn',
        detail: `no 2 MiB hugepage pool found (${sysDir}, ${ctx.proc('meminfo')})`,
        fix: 'a kernel with hugetlbfs, or skip --hugepages',
      },
    ];
  }
  const detail = `${free} free of ${total} (${free * 2} MiB free)`;
  const fix =
    'reserve hugepages on the node (sysctl vm.nr_hugepages, or the node group\'s bootstrap) and request them: resources.limits["hugepages-2Mi"] (the seed: 5120Mi) with an emptyDir medium: HugePages at /dev/hugepages';
  if (parseBool(ctx.env.KVF_HUGEPAGES) === true && free === 0) {
    return [{ group, name, status: 'fail', detail: `KVF_HUGEPAGES is on but ${detail}: the KV pool cannot be placed`, fix }];
  }
  if (ctx.usesEfa() && free === 0) {
    return [{ group, name, status: 'warn', detail: `${detail}: efa falls back to 4 KiB pages for its buffers`, fix }];
  }
  return [{ group, name, status: 'ok', detail }];
}
