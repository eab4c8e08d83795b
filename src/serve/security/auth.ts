// Who may call the control plane. Every gRPC call (Worker and Registry services) carries proof that its
// caller holds the cluster token: an HMAC of (method, time, nonce) under the token, never the token itself,
// so a rogue "worker" that a client is pointed at (a bad etcd entry) or a sniffer learns nothing it can
// reuse: a proof names one method, expires after a minute and is accepted once. TLS (mutual TLS as an option,
// certs from files) protects the channel itself; the proof is checked whether TLS is on or not.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';

import * as grpc from '@grpc/grpc-js';

import { KvfError } from '../../common/errors.js';

/** The metadata key that carries the proof: `v1.<unix ms>.<nonce hex>.<hmac hex>`. */
export const AUTH_HEADER = 'kvf-auth';
/** How far a proof's time may be from the server's clock, either way. */
const SKEW_MS = 60_000;
const MIN_TOKEN_LENGTH = 16;

export interface AuthConfig {
  clusterToken?: string;
  clusterTokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  /** Mutual TLS: the server asks for a client certificate signed by tlsCa and refuses calls without one. */
  tlsClientAuth?: boolean;
  /** The name clients expect in workers' certificates (when it is not the host they dial, e.g. pod IPs). */
  tlsServerName?: string;
}

interface Tls {
  cert: Buffer;
  key: Buffer;
  ca: Buffer | null;
  clientAuth: boolean;
  serverName: string | undefined;
}

export class ClusterAuth {
  readonly #token: Buffer;
  readonly #tls: Tls | undefined;
  // Proofs seen within the skew window, so a captured one cannot be replayed: nonce → expiry.
  readonly #seen = new Map<string, number>();
  #pruneAt = 0;

  private constructor(token: Buffer, tls: Tls | undefined) {
    this.#token = token;
    this.#tls = tls;
  }

  /** From configuration (token from the value or a file; TLS material from files). KVF_ERR_BAD_CONFIG when unusable. */
  static fromConfig(config: AuthConfig): ClusterAuth {
    const token = secretFrom('cluster token', config.clusterToken, config.clusterTokenFile, 'KVF_CLUSTER_TOKEN', '--cluster-token-file');
    return new ClusterAuth(token, tlsFrom(config));
  }

  get tls(): boolean {
    return this.#tls !== undefined;
  }

  serverCredentials(): grpc.ServerCredentials {
    const t = this.#tls;
    if (!t) return grpc.ServerCredentials.createInsecure();
    return grpc.ServerCredentials.createSsl(t.ca, [{ private_key: t.key, cert_chain: t.cert }], t.clientAuth);
  }

  /** Credentials and channel options for a client of `address`; every call it makes carries a fresh proof. */
  clientOptions(): { credentials: grpc.ChannelCredentials; options: grpc.ClientOptions } {
    const t = this.#tls;
    const credentials = t ? grpc.credentials.createSsl(t.ca, t.clientAuth ? t.key : null, t.clientAuth ? t.cert : null) : grpc.credentials.createInsecure();
    const interceptor: grpc.Interceptor = (options, next) =>
      new grpc.InterceptingCall(next(options), {
        start: (metadata, listener, start) => {
          metadata.set(AUTH_HEADER, this.prove(options.method_definition.path));
          start(metadata, listener);
        },
      });
    const options: grpc.ClientOptions = { interceptors: [interceptor] };
    if (t?.serverName) options['grpc.ssl_target_name_override'] = t.serverName;
    return { credentials, options };
  }

  /** A proof for one call of `method` (the full path, /kvfabric.v1.Worker/Prefill). */
  prove(method: string, now = Date.now()): string {
    const nonce = randomBytes(16).toString('hex');
    return `v1.${now}.${nonce}.${this.#mac(method, now, nonce)}`;
  }

  /** Throws KVF_ERR_UNAUTHENTICATED unless `proof` is a fresh, unused proof for `method`. */
  check(method: string, proof: unknown, now = Date.now()): void {
    const parts = typeof proof === 'string' ? proof.split('.') : [];
    const [version, time, nonce, mac] = parts;
    if (parts.length !== 4 || version !== 'v1' || !/^\d{1,15}$/.test(time!) || !/^[0-9a-f]{32}$/.test(nonce!) || !/^[0-9a-f]{64}$/.test(mac!)) {
      throw new KvfError(
        'KVF_ERR_UNAUTHENTICATED',
        proof === undefined ? `${method} needs the cluster token (no ${AUTH_HEADER} metadata)` : `${method}: malformed ${AUTH_HEADER} metadata`,
      );
    }
    const expected = Buffer.from(this.#mac(method, Number(time), nonce!), 'hex');
    if (!timingSafeEqual(expected, Buffer.from(mac!, 'hex')))
      throw new KvfError('KVF_ERR_UNAUTHENTICATED', `${method}: the caller does not hold this cluster's token`);
    if (Math.abs(now - Number(time)) > SKEW_MS)
      throw new KvfError(
        'KVF_ERR_UNAUTHENTICATED',
        `${method}: the proof is ${Math.round((now - Number(time)) / 1000)} s old (clocks more than ${SKEW_MS / 1000} s apart?)`,
      );
    this.#prune(now);
    if (this.#seen.has(nonce!)) throw new KvfError('KVF_ERR_UNAUTHENTICATED', `${method}: the proof was used before (replayed call)`);
    this.#seen.set(nonce!, Number(time) + SKEW_MS);
  }

  #mac(method: string, time: number, nonce: string): string {
    return createHmac('sha256', this.#token).update(`${method}\n${time}\n${nonce}`).digest('hex');
  }

  #prune(now: number): void {
    if (now < this.#pruneAt) return;
    this.#pruneAt = now + 1000;
    for (const [nonce, expires] of this.#seen) if (expires < now) this.#seen.delete(nonce);
  }
}

/** A secret given as a value (env) or a file (a mounted Kubernetes Secret); trailing newlines of files are dropped. */
export function secretFrom(what: string, value: string | undefined, file: string | undefined, env: string, flag: string): Buffer {
  let secret = value;
  if (file !== undefined) {
    try {
      secret = readFileSync(file, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      throw new KvfError('KVF_ERR_BAD_CONFIG', `cannot read the ${what} from ${file}: ${(err as Error).message}`);
    }
  }
  if (secret === undefined || secret === '') {
    throw new KvfError(
      'KVF_ERR_BAD_CONFIG',
      `no ${what}: set ${env} or ${flag} (e.g. ${env}=$(openssl rand -hex 32), the same on every process of the cluster)`,
    );
  }
  if (secret.length < MIN_TOKEN_LENGTH)
    throw new KvfError('KVF_ERR_BAD_CONFIG', `the ${what} has ${secret.length} characters; it needs at least ${MIN_TOKEN_LENGTH}`);
  return Buffer.from(secret, 'utf8');
}

function tlsFrom(config: AuthConfig): Tls | undefined {
  const { tlsCert, tlsKey, tlsCa } = config;
  if (!tlsCert && !tlsKey && !tlsCa && !config.tlsClientAuth) return undefined;
  if (!tlsCert || !tlsKey) throw new KvfError('KVF_ERR_BAD_CONFIG', 'TLS needs both tlsCert and tlsKey (certificate chain and private key files, PEM)');
  if (config.tlsClientAuth && !tlsCa) throw new KvfError('KVF_ERR_BAD_CONFIG', 'mutual TLS (tlsClientAuth) needs tlsCa: the CA that signs client certificates');
  const read = (path: string, what: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new KvfError('KVF_ERR_BAD_CONFIG', `cannot read the TLS ${what} ${path}: ${(err as Error).message}`);
    }
  };
  return {
    cert: read(tlsCert, 'certificate'),
    key: read(tlsKey, 'key'),
    ca: tlsCa ? read(tlsCa, 'CA') : null,
    clientAuth: config.tlsClientAuth ?? false,
    serverName: config.tlsServerName,
  };
}

/**
 * Wraps a service implementation so that every method first checks the caller's proof (and, with `allowed`,
 * that the method is one this server serves); refused calls end with UNAUTHENTICATED / PERMISSION_DENIED and
 * the kvfabric code in the trailing metadata, before any of the handler's work.
 */
export function guardService(
  auth: ClusterAuth,
  service: grpc.ServiceDefinition,
  impl: grpc.UntypedServiceImplementation,
  refuse: (err: KvfError) => Partial<grpc.ServiceError>,
  allowed?: (method: string) => KvfError | undefined,
): grpc.UntypedServiceImplementation {
  const guarded: grpc.UntypedServiceImplementation = {};
  for (const [name, def] of Object.entries(service)) {
    const handler = impl[name];
    if (!handler) continue;
    guarded[name] = ((call: grpc.ServerUnaryCall<unknown, unknown> & grpc.ServerWritableStream<unknown, unknown>, cb?: grpc.sendUnaryData<unknown>) => {
      let refusal: KvfError | undefined;
      try {
        auth.check(def.path, call.metadata.get(AUTH_HEADER)[0]);
        refusal = allowed?.(name);
      } catch (err) {
        refusal = err as KvfError;
      }
      if (!refusal) return (handler as (c: unknown, cb?: unknown) => void)(call, cb);
      const status = refuse(refusal);
      if (cb) cb(status);
      else call.emit('error', status);
    }) as grpc.UntypedHandleCall;
  }
  return guarded;
}
