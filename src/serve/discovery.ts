// How workers and the frontend find each other, besides static addresses:
// - etcd: a worker puts `<prefix><workerId>` → {address, role} under a lease it keeps alive; the frontend
//   lists the prefix and watches it. A worker that dies stops renewing, etcd deletes the key when the
//   lease expires, and the frontend drops the worker.
// - registry: the frontend serves the Registry gRPC service; a worker registers with a TTL and renews it.
import { Etcd3, type Lease, type Watcher } from 'etcd3';

import type { Logger } from '../common/logger.js';
import type { Role } from './config.js';
import type { Router } from './router.js';
import { toServiceError } from './grpc-errors.js';
import { bindServer, grpc, registryClient, RegistryService, unary, type WorkerStatus } from './rpc.js';
import { guardService, type ClusterAuth } from './security/auth.js';

interface Announcement {
  workerId: string;
  role: Role;
  address: string;
}

export interface Publication {
  close(): Promise<void>;
}

/** Keeps a worker's entry in etcd for as long as the process lives (and puts it back if the lease is lost). */
export async function publishToEtcd(endpoints: string[], prefix: string, ttlSeconds: number, worker: Announcement, log: Logger): Promise<Publication> {
  const client = new Etcd3({ hosts: endpoints });
  const key = prefix + worker.workerId;
  let lease: Lease | undefined;
  let closed = false;
  let retry: NodeJS.Timeout | undefined;
  let started = false;
  let failing = false;
  // A lost lease (etcd unreachable for longer than the TTL, or the lease revoked) and a failed put both end
  // here: one retry at a time, every 500 ms until the key is back, so a live worker never stays unlisted.
  const again = (why: string): void => {
    // Before the first registration has worked, its failure is the caller's error: no retry.
    if (closed || retry || !started) return;
    if (!failing) log.warn({ err: why, workerId: worker.workerId }, 'etcd registration lost; registering again');
    failing = true;
    retry = setTimeout(() => {
      retry = undefined;
      register().then(
        () => {
          failing = false;
          log.info({ workerId: worker.workerId }, 'registered in etcd again');
        },
        (err: Error) => again(err.message),
      );
    }, 500).unref();
  };
  const register = async (): Promise<void> => {
    const l = client.lease(ttlSeconds);
    lease = l;
    l.on('lost', (err: Error) => {
      if (lease === l) again(err.message);
    });
    try {
      await l.put(key).value(JSON.stringify(worker));
    } catch (err) {
      // A lease without the key would be kept alive for nothing.
      void l.revoke().catch(() => undefined);
      throw err;
    }
  };
  try {
    await register();
  } catch (err) {
    client.close();
    throw err;
  }
  started = true;
  log.info({ workerId: worker.workerId, endpoints, ttlSeconds }, 'registered in etcd');
  return {
    async close() {
      closed = true;
      clearTimeout(retry);
      await lease?.revoke().catch(() => undefined);
      client.close();
    },
  };
}

/**
 * Feeds the router from an etcd prefix: the current entries, then every change from the revision of that
 * listing on. A watch that etcd cancels (its revision compacted away while disconnected) lists and watches again.
 */
export async function watchEtcd(endpoints: string[], prefix: string, router: Router, log: Logger): Promise<Publication> {
  const client = new Etcd3({ hosts: endpoints });
  const byKey = new Map<string, string>();
  let watcher: Watcher | undefined;
  let retry: NodeJS.Timeout | undefined;
  let closed = false;
  // etcd removes only workers etcd added, and an address stays while another key still announces it (a
  // worker restarted under a new id on the same address, its old key not expired yet).
  const drop = (key: string, why: string): void => {
    const address = byKey.get(key);
    byKey.delete(key);
    if (address === undefined || [...byKey.values()].includes(address)) return;
    if (router.workers().find((w) => w.address === address)?.source === 'etcd') router.remove(address, why);
  };
  const apply = (key: string, value: string): void => {
    let a: Announcement;
    try {
      a = JSON.parse(value) as Announcement;
      if (typeof a?.address !== 'string' || (a.role !== 'prefill' && a.role !== 'decode')) throw new Error('missing address or role');
    } catch (err) {
      log.warn({ key, err: (err as Error).message }, 'ignoring malformed etcd worker entry');
      // The key announces no worker any more, whatever it announced before.
      drop(key, 'etcd entry replaced by a malformed one');
      return;
    }
    if (byKey.get(key) !== a.address) drop(key, 'replaced in etcd');
    byKey.set(key, a.address);
    router.upsert(a.address, a.role, 'etcd');
  };
  const sync = async (): Promise<void> => {
    const listing = await client.getAll().prefix(prefix).exec();
    const listed = new Set(listing.kvs.map((kv) => kv.key.toString()));
    for (const key of [...byKey.keys()]) if (!listed.has(key)) drop(key, 'etcd entry deleted while not watching');
    for (const kv of listing.kvs) apply(kv.key.toString(), kv.value.toString());
    // Watching from just after the listing's revision, no change between the two is missed or applied twice.
    const w = await client
      .watch()
      .prefix(prefix)
      .startRevision((BigInt(listing.header.revision) + 1n).toString())
      .create();
    if (closed) return void w.cancel().catch(() => undefined);
    watcher = w;
    w.on('put', (kv) => apply(kv.key.toString(), kv.value.toString()));
    w.on('delete', (kv) => drop(kv.key.toString(), 'etcd entry deleted (lease expired or worker left)'));
    // 'disconnected' needs nothing: the client reconnects and resumes from the last revision it saw.
    w.on('error', (err: Error) => {
      log.warn({ err: err.message }, 'etcd watch cancelled; listing the workers again');
      resync();
    });
  };
  const resync = (): void => {
    if (closed) return;
    retry = setTimeout(() => {
      sync().catch((err: Error) => {
        log.warn({ err: err.message }, 'etcd listing failed; retrying');
        resync();
      });
    }, 1000).unref();
  };
  try {
    await sync();
  } catch (err) {
    client.close();
    throw err;
  }
  log.info({ endpoints, prefix }, 'watching etcd for workers');
  return {
    async close() {
      closed = true;
      clearTimeout(retry);
      await watcher?.cancel().catch(() => undefined);
      client.close();
    },
  };
}

/** The frontend's Registry service: Register adds or renews a worker for ttlMs, Deregister removes it; callers prove the cluster token. */
export async function serveRegistry(listen: string, router: Router, auth: ClusterAuth): Promise<{ address: string; close(): Promise<void> }> {
  const server = new grpc.Server();
  server.addService(
    RegistryService,
    guardService(
      auth,
      RegistryService,
      {
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
      },
      toServiceError,
    ),
  );
  const address = await bindServer(server, listen, auth);
  return { address, close: () => new Promise((resolve) => server.tryShutdown(() => resolve())) };
}

/** A worker's registration with a frontend registry, renewed every ttl/3. */
export function publishToRegistry(registry: string, ttlMs: number, status: () => WorkerStatus, auth: ClusterAuth, log: Logger): Publication {
  const client = registryClient(registry, auth);
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
