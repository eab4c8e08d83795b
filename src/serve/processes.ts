// Process wrappers for the CLI: start a worker or frontend from its configuration, announce readiness
// (one JSON line on stdout, and an IPC message when a parent forked us), and shut down gracefully on
// SIGTERM/SIGINT: stop taking work, drain what is in flight, close the fabric agent, flush the traces, exit.
// Each process exports its own spans (service.name kvfabric-<role>) when OTLP is configured (common/tracing.ts).
import { networkInterfaces } from 'node:os';

import { defaultLogger, type Logger } from '../common/logger.js';
import { initTracing, shutdownTracing } from '../common/tracing.js';
import type { FrontendConfig, WorkerConfig } from './config.js';
import { publishToEtcd, publishToRegistry, type Publication } from './discovery.js';
import { Frontend, splitHostPort } from './frontend/frontend.js';
import { ClusterAuth } from './security/auth.js';
import { Worker } from './worker.js';

export interface Ready {
  event: 'ready';
  role: 'prefill' | 'decode' | 'frontend';
  pid: number;
  address: string;
  workerId?: string;
}

export async function runWorker(config: WorkerConfig, log: Logger = defaultLogger()): Promise<Worker> {
  await initTracing(config.role, log, { 'kvfabric.worker.id': config.id });
  const worker = await Worker.start(config, log);
  const address = config.advertise ?? advertised(worker.address);
  const announcement = { workerId: worker.id, role: worker.role, address };
  const publications: Publication[] = [];
  try {
    if (config.etcd?.length) publications.push(await publishToEtcd(config.etcd, config.etcdPrefix, config.etcdTtl, announcement, log));
    if (config.register)
      publications.push(
        publishToRegistry(config.register, config.etcdTtl * 1000, () => ({ ...worker.status(), address }), ClusterAuth.fromConfig(config), log),
      );
  } catch (err) {
    // A worker nobody can find must not linger: undo what started, then fail.
    for (const p of publications) await p.close();
    await worker.close();
    throw err;
  }
  announce({ event: 'ready', role: worker.role, pid: process.pid, address, workerId: worker.id });
  onShutdown(log, async () => {
    // Leave discovery first so no new request is routed here, then drain.
    for (const p of publications) await p.close();
    await worker.close();
  });
  return worker;
}

export async function runFrontend(config: FrontendConfig, log: Logger = defaultLogger()): Promise<Frontend> {
  await initTracing('frontend', log);
  const frontend = await Frontend.start(config, log);
  announce({ event: 'ready', role: 'frontend', pid: process.pid, address: frontend.url });
  onShutdown(log, () => frontend.close());
  return frontend;
}

export function announce(ready: Ready): void {
  process.stdout.write(`${JSON.stringify(ready)}\n`);
  process.send?.(ready);
}

/**
 * Runs `close` once on SIGTERM or SIGINT, flushes the spans not yet exported (a few seconds at most), then exits
 * (0, or 1 if closing failed); a second signal exits at once.
 */
export function onShutdown(log: Logger, close: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals): void => {
    if (stopping) process.exit(130);
    stopping = true;
    log.info({ signal }, 'shutting down: draining requests in flight');
    close().then(
      () => shutdownTracing().then(() => process.exit(0)),
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        return shutdownTracing().then(() => process.exit(1));
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}

/** A bound address others can dial: 0.0.0.0 becomes this host's first external IPv4 address. */
function advertised(bound: string): string {
  const [host, port] = splitHostPort(bound);
  if (host !== '0.0.0.0' && host !== '::') return bound;
  const ip = Object.values(networkInterfaces())
    .flat()
    .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
  return `${ip ?? '127.0.0.1'}:${port}`;
}
