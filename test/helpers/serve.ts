// Serving tests' scaffolding: worker processes started through the real CLI (dist/cli/main.js, built by
// scripts/run-tests.mjs), a frontend in the test process or as `kvfabric serve`, and small readers for the
// workers' Health RPC. Every child is tracked and killed at exit, so a failing test never leaves one behind.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import { pino } from 'pino';

import { frontendConfig } from '../../src/serve/config.js';
import { Frontend } from '../../src/serve/frontend/frontend.js';
import type { Ready } from '../../src/serve/processes.js';
import { unary, workerClient, type WorkerStatus } from '../../src/serve/rpc.js';
import { ClusterAuth } from '../../src/serve/security/auth.js';
import { innerPid, type Host, type Hosts } from './hosts.js';
import { HAVE_SMOLLM2, SMOLLM2 } from './models.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI = join(ROOT, 'dist', 'cli', 'main.js');
export { HAVE_SMOLLM2, SMOLLM2 };
/** Why a test on SmolLM2 cannot run here (not fetched, or the sanitizer build's unoptimised engine), else false. */
export const SMOLLM2_SKIP: string | false = !HAVE_SMOLLM2
  ? 'model not fetched (npm run fetch-model)'
  : process.env.KVF_SANITIZE_ENGINE === '1'
    ? 'too slow unoptimised'
    : false;

/** A fresh copy of the tiny model in a temp dir (tests never depend on models/ being generated); `shape`: make-tiny-model's flags. */
export function tinyModel(shape: string[] = []): string {
  const path = join(mkdtempSync(join(tmpdir(), 'kvf-serve-')), 'tiny-llama.gguf');
  execFileSync(process.execPath, [join(ROOT, 'scripts', 'make-tiny-model.mjs'), path, ...shape]);
  return path;
}

/** A synthetic model large enough that a long generation takes seconds on a CPU: time to interrupt it mid-stream. */
export const SLOW_MODEL_SHAPE = ['--layers', '8', '--dim', '256', '--ffn', '1024', '--context', '2048'];
/** Why tests on that model cannot run here: the sanitizer build's unoptimised engine takes minutes where they need seconds. */
export const SLOW_MODEL_SKIP: string | false = process.env.KVF_SANITIZE_ENGINE === '1' ? 'too slow unoptimised' : false;

/** This test process's cluster: every worker it starts gets these; frontends get the token alone. */
export const SECRETS = { KVF_CLUSTER_TOKEN: randomBytes(24).toString('hex'), KVF_HANDLE_KEY: randomBytes(24).toString('hex') };
/** Frontend config flags for this cluster's token. */
export const CLUSTER = { clusterToken: SECRETS.KVF_CLUSTER_TOKEN };
/** Credentials of this cluster, for tests that call workers themselves. */
export const AUTH = ClusterAuth.fromConfig(CLUSTER);

/** Logs of in-process frontends: warnings and errors only, to stderr. */
export const quietLog = pino({ level: process.env.KVF_TEST_LOG ?? 'warn' }, pino.destination(2));

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/**
 * The environment for tools that are not kvfabric (curl, bash scripts): without the sanitizer run's LD_PRELOAD of
 * libasan, under which curl hangs.
 */
export function toolEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const { LD_PRELOAD: _preload, ...rest } = process.env;
  return { ...rest, ...extra };
}

/** Runs curl; resolves with its stdout. */
export function curl(args: string[]): Promise<{ stdout: string }> {
  return new Promise((resolve, reject) => execFile('curl', args, { env: toolEnv() }, (err, stdout) => (err ? reject(err) : resolve({ stdout }))));
}

export interface Proc {
  child: ChildProcess;
  ready: Ready;
  /** stderr lines (pino JSON logs) so far. */
  logs: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Started through a prefix (startCli): signals go to the program it runs, not to the prefix's process. */
  prefixed?: boolean;
}

/**
 * Runs `kvfabric <args>` and resolves when it prints its ready line. `prefix` runs it through another program
 * (a simulated host's `ip netns exec …`, test/helpers/hosts.ts); killing the child kills what that runs.
 */
export function startCli(args: string[], env: NodeJS.ProcessEnv = {}, prefix: string[] = []): Promise<Proc> {
  const [file, ...pre] = [...prefix, process.execPath];
  const child = spawn(file!, [...pre, CLI, ...args], { env: { ...process.env, KVF_LOG_LEVEL: 'info', ...SECRETS, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  const logs: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => logs.push(l));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    }),
  );
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      try {
        const ready = JSON.parse(line) as Ready;
        if (ready.event === 'ready') resolve({ child, ready, logs, exited, prefixed: prefix.length > 0 });
      } catch {
        // not the ready line
      }
    });
    void exited.then(({ code, signal }) => reject(new Error(`kvfabric ${args.join(' ')} exited (${code ?? signal}) before it was ready:\n${logs.join('\n')}`)));
  });
}

export interface WorkerOptions {
  model: string;
  provider: string;
  id: string;
  extra?: string[];
  env?: NodeJS.ProcessEnv;
  /** gRPC listen address (default 127.0.0.1:0). */
  listen?: string;
  /** See startCli. */
  prefix?: string[];
}

export function startWorker(role: 'prefill' | 'decode', o: WorkerOptions): Promise<Proc> {
  const args = [
    role,
    '--model',
    o.model,
    '--provider',
    o.provider,
    '--id',
    o.id,
    '--listen',
    o.listen ?? '127.0.0.1:0',
    '--blocks',
    '64',
    '--tokens-per-block',
    '16',
    '--threads',
    '1',
  ];
  // The prefix cache is off unless a test asks for it: most tests check that each response moved its whole prompt.
  const cache = o.extra?.includes('--prefix-cache') ? [] : ['--prefix-cache', 'off'];
  return startCli([...args, ...cache, ...(o.extra ?? [])], o.env, o.prefix);
}

/** A tcp worker on a simulated host: listening on the host's address, inside its namespaces. */
export function startWorkerOn(net: Hosts, host: Host, role: 'prefill' | 'decode', o: Omit<WorkerOptions, 'provider' | 'listen' | 'prefix'>): Promise<Proc> {
  return startWorker(role, { ...o, provider: 'tcp', listen: `${host.ip}:0`, prefix: net.prefix(host) });
}

export interface Stack {
  prefill: Proc;
  decode: Proc;
  frontend: Frontend;
  url: string;
  modelName: string;
  close(): Promise<void>;
}

/** A frontend in this process over these workers (static addresses), resolved once all of them are healthy. */
export async function startFrontend(model: string, workers: { prefill: Proc[]; decode: Proc[] }, flags: Record<string, unknown> = {}): Promise<Frontend> {
  const addresses = (ps: Proc[]) => ps.map((p) => p.ready.address);
  const frontend = await Frontend.start(
    frontendConfig({
      flags: {
        ...CLUSTER,
        model,
        listen: '127.0.0.1:0',
        prefill: addresses(workers.prefill),
        decode: addresses(workers.decode),
        healthIntervalMs: 200,
        ...flags,
      },
      env: {},
    }),
    quietLog,
  );
  await waitFor(() => frontend.router.workers().every((w) => w.healthy), 'workers healthy');
  return frontend;
}

/** Prefill and decode worker processes plus a frontend in this process, wired by static addresses. */
export async function startStack(
  model: string,
  provider: string,
  frontendFlags: Record<string, unknown> = {},
  workers: Pick<WorkerOptions, 'extra' | 'env'> = {},
): Promise<Stack> {
  const [prefill, decode] = await Promise.all([
    startWorker('prefill', { model, provider, id: `prefill-${provider}`, ...workers }),
    startWorker('decode', { model, provider, id: `decode-${provider}`, ...workers }),
  ]);
  const frontend = await startFrontend(model, { prefill: [prefill], decode: [decode] }, frontendFlags);
  return {
    prefill,
    decode,
    frontend,
    url: frontend.url,
    modelName: model
      .split('/')
      .pop()!
      .replace(/\.gguf$/, ''),
    async close() {
      await frontend.close();
      await Promise.all([stop(prefill), stop(decode)]);
    },
  };
}

/** SIGTERM and wait for the exit. */
export async function stop(p: Proc): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (p.child.exitCode === null && p.child.signalCode === null) {
    // unshare --fork ignores SIGTERM while it waits: the worker inside gets it (the prefix exits with it).
    const inner = p.prefixed ? innerPid(p.child.pid!) : undefined;
    if (inner !== undefined) process.kill(inner, 'SIGTERM');
    else p.child.kill(p.prefixed ? 'SIGKILL' : 'SIGTERM');
  }
  return p.exited;
}

export function health(address: string): Promise<WorkerStatus> {
  const client = workerClient(address, AUTH);
  return unary(client, client.health, {}, 5000).finally(() => client.close());
}

export async function waitFor(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Resolves once the worker's pool is back to all blocks free and it holds no request. */
export function poolAtBaseline(address: string, timeoutMs = 10_000): Promise<void> {
  return waitFor(
    async () => {
      const s = await health(address);
      return s.freeBlocks === s.totalBlocks && s.heldRequests === 0;
    },
    `pool of ${address} back at baseline`,
    timeoutMs,
  );
}
