// Which processes a pid names: two agents whose identities match run under the same kernel boot and in the
// same pid namespace, so one can reach the other's memory by pid (the same-host fast path). Containers on one
// node share the boot id but not the pid namespace, so they never match by mistake.
import { readFileSync, readlinkSync } from 'node:fs';

let cached: string | undefined;

/** '' when it cannot be told (not Linux, /proc hidden): then nothing matches and transfers use the fabric. */
export function hostIdentity(): string {
  if (cached === undefined) {
    try {
      cached = `${readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()}/${readlinkSync('/proc/self/ns/pid')}`;
    } catch {
      cached = '';
    }
  }
  return cached;
}

/** The fast path is on unless the option or KVF_FAST_PATH=0 turns it off. */
export function fastPathEnabled(option: boolean | undefined, env: NodeJS.ProcessEnv = process.env): boolean {
  return option ?? env.KVF_FAST_PATH !== '0';
}
