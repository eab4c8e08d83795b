// How workers and the frontend find each other, besides static addresses:
// - etcd: a worker puts `<prefix><workerId>` → {address, role} under a lease it keeps alive; the frontend
//   lists the prefix and watches it. A worker that dies stops renewing, etcd deletes the key when the
//   lease expires, and the frontend drops the worker.
// - registry: the frontend serves the Registry gRPC service; a worker registers with a TTL and renews it.
import { Etcd3, type Lease, type Watcher } from 'etcd3';

import type { Logger } from '../fabric/logger.js';
import type { Role } from './config.js';
import type { Router } from './router.js';
import { bindServer, grpc, registryClient, RegistryService, unary, type WorkerStatus } from './rpc.js';

interface Announcement {
  workerId: string;
  role: Role;
  address: string;
}

export interface Publication {
  close(): Promise<void>;
}

/** Keeps a worker's entry in etcd for as long as the process lives (and renews it if the lease is lost). */
export async function publishToEtcd(endpoints: string[], prefix: string, ttlSeconds: number, worker: Announcement, log: Logger): Promise<Publication> {
  const client = new Etcd3({ hosts: endpoints });
  let lease: Lease | undefined;
  let closed = false;
  const grant = async (): Promise<void> => {
    lease = client.lease(ttlSeconds);
    lease.on('lost', (err) => {
      if (closed) return;
      log.warn({ err: err.message, workerId: worker.workerId }, 'etcd lease lost; registering again');
      setTimeout(() => void grant().catch((e: Error) => log.error({ err: e.message }, 'etcd registration failed')), 500).unref();
    });
    await lease.put(prefix + worker.workerId).value(JSON.stringify(worker));
  };
  await grant();
  log.info({ workerId: worker.workerId, endpoints, ttlSeconds }, 'registered in etcd');
  return {
    async close() {
      closed = true;
      await lease?.revoke().catch(() => undefined);
      client.close();
    },
  };
}

/** Feeds the router from an etcd prefix: the current entries, then every change. */
export async function watchEtcd(endpoints: string[], prefix: string, router: Router, log: Logger): Promise<Publication> {
  const client = new Etcd3({ hosts: endpoints });
  const byKey = new Map<string, string>();
  const apply = (key: string, value: string): void => {
    try {
      const a = JSON.parse(value) as Announcement;
      if (typeof a.address !== 'string' || (a.role !== 'prefill' && a.role !== 'decode')) throw new Error('missing address or role');
      const previous = byKey.get(key);
      if (previous && previous !== a.address) router.remove(previous, 'replaced in etcd');
      byKey.set(key, a.address);
      router.upsert(a.address, a.role, 'etcd');
    } catch (err) {
      log.warn({ key, err: (err as Error).message }, 'ignoring malformed etcd worker entry');
    }
  };
  const watcher: Watcher = await client.watch().prefix(prefix).create();
  watcher.on('put', (kv) => apply(kv.key.toString(), kv.value.toString()));
  watcher.on('delete', (kv) => {
    const key = kv.key.toString();
    const address = byKey.get(key);
    byKey.delete(key);
    if (address) router.remove(address, 'etcd entry deleted (lease expired or worker left)');
  });
  watcher.on('error', (err: Error) => log.warn({ err: err.message }, 'etcd watch error'));
  for (const [key, value] of Object.entries(await client.getAll().prefix(prefix).strings())) apply(key, value);
  log.info({ endpoints, prefix }, 'watching etcd for workers');
  return {
    async close() {
      await watcher.cancel().catch(() => undefined);
      client.close();
    },
  };
}

/** The frontend's Registry service: Register adds or renews a worker for ttlMs, Deregister removes it. */
export async function serveRegistry(listen: string, router: Router): Promise<{ address: string; close(): Promise<void> }> {
  const server = new grpc.Server();
  server.addService(RegistryService, {
    Register(call: grpc.ServerUnaryCall<WorkerStatus, unknown>, cb: grpc.sendUnaryData<{ ok: boolean }>) {
      const s = call.request;
      if (!s.address || (s.role !== 'prefill' && s.role !== 'decode')) {
        cb({ code: grpc.status.INVALID_ARGUMENT, details: 'KVF_ERR_INVALID_ARGUMENT: a registration needs an address and the role prefill or decode' });
        return;
      }
      router.upsert(s.address, s.role, 'registry', s, s.ttlMs || 10_000);
      cb(null, { ok: true });
    },
    Deregister(call: grpc.ServerUnaryCall<{ workerId: string }, unknown>, cb: grpc.sendUnaryData<{ ok: boolean }>) {
      const entry = router.workers().find((w) => w.status?.workerId === call.request.workerId && w.source === 'registry');
      if (entry) router.remove(entry.address, 'deregistered');
      cb(null, { ok: entry !== undefined });
    },
  });
  const address = await bindServer(server, listen);
  return { address, close: () => new Promise((resolve) => server.tryShutdown(() => resolve())) };
}

/** A worker's registration with a frontend registry, renewed every ttl/3. */
export function publishToRegistry(registry: string, ttlMs: number, status: () => WorkerStatus, log: Logger): Publication {
  const client = registryClient(registry);
  let warned = false;
  const renew = (): void => {
    unary(client, client.register, { ...status(), ttlMs }, ttlMs).then(
      () => (warned = false),
      (err: Error) => {
        if (!warned) log.warn({ registry, err: err.message }, 'registration failed; retrying');
        warned = true;
      },
    );
  };
  renew();
  const timer = setInterval(renew, Math.max(100, Math.floor(ttlMs / 3))).unref();
  return {
    async close() {
      clearInterval(timer);
      await unary(client, client.deregister, { workerId: status().workerId }, 2000).catch(() => undefined);
      client.close();
    },
  };
}
