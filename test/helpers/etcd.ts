// A real etcd server for discovery tests: the installed binary (etcd-server), a temp data dir, a single member.
// Here on 127.0.0.1 with free ports, or on a simulated host (test/helpers/hosts.ts) at that host's IP, where
// the namespace is fresh and etcd's default ports are free.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';

import { innerPid } from './hosts.js';
import { waitFor } from './serve.js';

export function findEtcd(): string | undefined {
  for (const dir of ['/usr/bin', ...(process.env.PATH ?? '').split(delimiter).filter(Boolean)]) {
    const path = join(dir, 'etcd');
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export interface EtcdServer {
  url: string;
  child: ChildProcess;
  dir: string;
  /** Started through a host's prefix: the etcd process is the child of the child (unshare). */
  prefixed: boolean;
}

/** On a simulated host: its namespace prefix and IP (clients, in any namespace, dial that IP). */
export interface EtcdHost {
  prefix: string[];
  ip: string;
}

/** A single-member etcd; resolves once /health says it has a leader (within `waitMs`). */
export async function startEtcd(binary: string, waitMs: number, host?: EtcdHost): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'kvf-etcd-'));
  const [clientHost, client, peer] = host ? [host.ip, 2379, 2380] : ['127.0.0.1', await freePort(), await freePort()];
  const url = `http://${clientHost}:${client}`;
  // Members talk to each other on the peer URL; with one member it only needs to be local to its host.
  const peerUrl = `http://127.0.0.1:${peer}`;
  const [file, ...pre] = [...(host?.prefix ?? []), binary];
  const child = spawn(
    file!,
    [
      ...pre,
      '--name',
      't',
      '--data-dir',
      join(dir, 'data'),
      '--listen-client-urls',
      url,
      '--advertise-client-urls',
      url,
      '--listen-peer-urls',
      peerUrl,
      '--initial-advertise-peer-urls',
      peerUrl,
      '--initial-cluster',
      `t=${peerUrl}`,
      '--logger',
      'zap',
      '--log-outputs',
      'stderr',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr!.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-8000)));
  const server = { url, child, dir, prefixed: host !== undefined };
  // Even when this process dies on a failure, etcd must not outlive it (a prefix's --kill-child takes etcd along).
  process.once('exit', () => child.kill('SIGKILL'));
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`etcd exited (${child.exitCode ?? child.signalCode}):\n${log}`);
        const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
        return res?.ok === true && ((await res.json()) as { health: string }).health === 'true';
      },
      'etcd to answer /health',
      waitMs,
    );
  } catch (err) {
    await stopEtcd(server);
    throw err;
  }
  return server;
}

export async function stopEtcd(server: EtcdServer): Promise<void> {
  // Removing the data dir waits for the exit: etcd writes there until it is gone. Under a prefix, etcd itself
  // is killed first, so that unshare's exit (which follows its child's) means etcd is gone.
  if (server.child.exitCode === null && server.child.signalCode === null) {
    const exited = new Promise((resolve) => server.child.once('exit', resolve));
    const inner = server.prefixed ? innerPid(server.child.pid!) : undefined;
    if (inner !== undefined) process.kill(inner, 'SIGKILL');
    else server.child.kill('SIGKILL');
    // A bound on the wait: SIGKILL cannot be refused, so only a stuck kernel would get here.
    const timer = setTimeout(() => server.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
  rmSync(server.dir, { recursive: true, force: true });
}
