// What every check needs: where /dev, /proc and /sys are, the environment, and a few facts several checks
// share (GPUs, EFA devices, which provider a worker would use), each worked out once.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { basename, delimiter, dirname, join } from 'node:path';

import { requestedProvider } from '../fabric/config.js';
import type { CudaProbe, DoctorOptions } from './types.js';

export interface Context {
  env: NodeJS.ProcessEnv;
  /** A path under the root (default '/'). */
  at(...parts: string[]): string;
  dev(...parts: string[]): string;
  proc(...parts: string[]): string;
  sys(...parts: string[]): string;
  openAgent: boolean;
  /** The provider stack a worker would ask for ('efa', 'tcp;ofi_rxm', …), or undefined for automatic (efa, else tcp). */
  provider: string | undefined;
  /** The provider request is invalid (e.g. not a string); reported by the providers check. */
  providerError?: string;
  /** EFA device names under <sys>/class/infiniband (rdmap*, or any whose driver is efa). */
  efaDevices(): string[];
  /** Whether the worker would run over efa: asked for, or automatic with EFA devices present. */
  usesEfa(): boolean;
  /** /dev/nvidia<N> device nodes. */
  gpus(): string[];
  /** `fi_info -l` and `fi_info -e` of the libfabric kvfabric loads (next to KVF_LIBFABRIC if there, else on PATH). */
  fiInfo(): Promise<FiInfo>;
  /** The CUDA driver and FI_HMEM probes (the addon's), or undefined when they are not to run (openAgent false). */
  cuda(): Promise<CudaProbe | undefined>;
}

export interface FiInfo {
  /** The fi_info binary, or undefined when there is none. */
  path?: string;
  /** Whether it belongs to KVF_LIBFABRIC's installation (else: the system one, maybe another libfabric). */
  matchesLoaded: boolean;
  providers: string[];
  /** Variable names the providers read (`fi_info -e`). */
  vars: Set<string>;
  error?: string;
}

export function makeContext(o: DoctorOptions = {}): Context {
  const root = o.root ?? '/';
  const devRoot = o.devRoot ?? join(root, 'dev');
  const procRoot = o.procRoot ?? join(root, 'proc');
  const sysRoot = o.sysRoot ?? join(root, 'sys');
  const env = o.env ?? process.env;
  let provider: string | undefined;
  let providerError: string | undefined;
  try {
    provider = requestedProvider(o.provider ?? (env.FI_PROVIDER ? undefined : env.KVF_PROVIDER), env);
  } catch (err) {
    providerError = (err as Error).message;
  }
  let efa: string[] | undefined;
  let gpus: string[] | undefined;
  let fiInfo: Promise<FiInfo> | undefined;
  let cuda: Promise<CudaProbe | undefined> | undefined;
  const ctx: Context = {
    env,
    at: (...p) => join(root, ...p),
    dev: (...p) => join(devRoot, ...p),
    proc: (...p) => join(procRoot, ...p),
    sys: (...p) => join(sysRoot, ...p),
    openAgent: o.openAgent ?? true,
    provider,
    ...(providerError ? { providerError } : {}),
    efaDevices: () => (efa ??= listEfa(join(sysRoot, 'class', 'infiniband'))),
    usesEfa: () => (provider === undefined ? ctx.efaDevices().length > 0 : provider === 'efa'),
    fiInfo: () => (fiInfo ??= readFiInfo(env)),
    cuda: () => (cuda ??= o.cuda ? Promise.resolve(o.cuda) : (o.openAgent ?? true) ? loadCudaProbe() : Promise.resolve(undefined)),
    gpus: () =>
      (gpus ??= list(devRoot)
        .filter((n) => /^nvidia\d+$/.test(n))
        .sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))),
  };
  return ctx;
}

/** The addon's probes; a missing or broken addon becomes a probe that says so, not a crash of the doctor. */
async function loadCudaProbe(): Promise<CudaProbe> {
  try {
    const { gpuAddon } = await import('../fabric/gpu-native.js');
    return { status: () => gpuAddon.cudaStatus(), hmem: (p) => gpuAddon.libfabricHmem(p) };
  } catch (err) {
    const reason = `the kvfabric addon did not load: ${(err as Error).message}`;
    return { status: () => ({ available: false, reason, devices: [] }), hmem: () => ({ hmem: false, error: reason }) };
  }
}

async function readFiInfo(env: NodeJS.ProcessEnv): Promise<FiInfo> {
  // The EFA installer puts fi_info in /opt/amazon/efa/bin beside lib/libfabric.so.1: that one describes the
  // library KVF_LIBFABRIC loads; a system fi_info may describe a different libfabric (Debian's has no efa).
  const beside = env.KVF_LIBFABRIC ? join(dirname(env.KVF_LIBFABRIC), '..', 'bin', 'fi_info') : undefined;
  const path = beside && existsSync(beside) ? beside : which('fi_info', env);
  const info: FiInfo = { matchesLoaded: path !== undefined && (path === beside || !env.KVF_LIBFABRIC), providers: [], vars: new Set() };
  if (!path) return info;
  info.path = path;
  const [l, e] = await Promise.all([probe(path, ['-l'], env), probe(path, ['-e'], env)]);
  if (!l.ok) info.error = l.stderr.trim().split('\n').pop() ?? 'fi_info -l failed';
  info.providers = [...l.stdout.matchAll(/^([A-Za-z0-9_;]+):\s*$/gm)].map((m) => m[1]!);
  for (const m of e.stdout.matchAll(/^# (FI_[A-Z0-9_]+):/gm)) info.vars.add(m[1]!);
  return info;
}

function listEfa(dir: string): string[] {
  return list(dir).filter((name) => {
    // EFA devices are named rdmap<bus>s<slot>; elsewhere the driver symlink says it (…/drivers/efa).
    if (/^rdmap\d+s\d+/.test(name)) return true;
    try {
      return basename(realpathSync(join(dir, name, 'device', 'driver'))) === 'efa';
    } catch {
      return false;
    }
  });
}

export function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** First executable `name` on the environment's PATH. */
export function which(name: string, env: NodeJS.ProcessEnv): string | undefined {
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

/** Runs a probe program; never throws (a missing or failing tool is a finding, not a crash). */
export function probe(file: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 10_000): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { env, timeout: timeoutMs, maxBuffer: 8 << 20 }, (err, stdout, stderr) =>
      resolve({ ok: !err, stdout: String(stdout), stderr: String(stderr || (err ? err.message : '')) }),
    );
  });
}

/** libfabric's boolean parsing (fi_param_get_bool): 1/on/yes/true, 0/off/no/false. */
export function parseBool(value: string | undefined): boolean | undefined {
  if (value === undefined) return undefined;
  const v = value.trim().toLowerCase();
  if (['1', 'on', 'yes', 'true', 'y'].includes(v)) return true;
  if (['0', 'off', 'no', 'false', 'n'].includes(v)) return false;
  return undefined;
}
