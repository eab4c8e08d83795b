// How busy the rest of the machine is while a benchmark runs: on a small machine other processes (tests beside
// us) change the numbers a lot, so runs record the CPU everything else took and wait for a quiet machine first.
import { readFileSync } from 'node:fs';

/** Busy CPU seconds of the whole machine so far (/proc/stat, USER_HZ = 100 on Linux). */
export function procBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f as [number, number, number, number, number, number, number, number];
  return (user + nice + system + irq + softirq + (steal ?? 0)) / 100;
}

/** Runs `fn` and returns its result with the cores other processes used meanwhile. */
export async function measured<T>(fn: () => Promise<T>): Promise<{ result: T; foreignCores: number; wallMs: number }> {
  const b0 = procBusySeconds();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await fn();
  const wallMs = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const foreign = procBusySeconds() - b0 - (c.user + c.system) / 1e6;
  return { result, foreignCores: Math.max(0, foreign / (wallMs / 1000)), wallMs };
}

/** Waits until other processes use under 0.15 cores (measured over 2 s), or `maxWaitS`; returns what they used. */
export async function waitQuiet(maxWaitS: number): Promise<number> {
  const start = performance.now();
  for (;;) {
    const b0 = procBusySeconds();
    const c0 = process.cpuUsage();
    await new Promise((r) => setTimeout(r, 2000));
    const c = process.cpuUsage(c0);
    const foreign = (procBusySeconds() - b0 - (c.user + c.system) / 1e6) / 2;
    if (foreign < 0.15 || (performance.now() - start) / 1000 > maxWaitS) return foreign;
    console.log(`waiting for a quiet machine: other processes use ${foreign.toFixed(2)} cores`);
  }
}
