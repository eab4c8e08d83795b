// `kvfabric doctor`: every check group in the order one debugs a node — devices, libfabric, variables, the
// fabric address peers dial, limits, memory, NIXL, GPUs. A check that throws becomes a failed row, so one
// broken probe never hides the others.
import { checkAddress } from './address.js';
import { makeContext, type Context } from './context.js';
import { checkEfa } from './efa.js';
import { checkFiEnv } from './fi-env.js';
import { checkGpu } from './gpu.js';
import { checkHugepages } from './hugepages.js';
import { checkMemlock } from './memlock.js';
import { checkNixl } from './nixl.js';
import { checkProviders } from './providers.js';
import type { CheckResult, DoctorOptions, DoctorReport } from './types.js';

export const CHECKS: ReadonlyArray<[group: string, run: (ctx: Context) => CheckResult[] | Promise<CheckResult[]>]> = [
  ['efa', checkEfa],
  ['providers', checkProviders],
  ['fi-env', checkFiEnv],
  ['address', checkAddress],
  ['memlock', checkMemlock],
  ['hugepages', checkHugepages],
  ['nixl', checkNixl],
  ['gpu', checkGpu],
];

export async function runDoctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const ctx = makeContext(options);
  const checks: CheckResult[] = [];
  for (const [group, run] of CHECKS) {
    try {
      checks.push(...(await run(ctx)));
    } catch (err) {
      checks.push({ group, name: 'check', status: 'fail', detail: `the check itself failed: ${(err as Error).message}`, fix: 'report this as a kvfabric bug' });
    }
  }
  return { ok: checks.every((c) => c.status !== 'fail'), checks };
}
