// The frontend process: tokenizer and chat template from the model file (the weights stay with the
// workers), a router fed by static addresses, etcd and/or the registry, and the HTTP API.
import { TINY_MODEL_WARNING, isTinyModel } from '../default-model.js';
import { basename } from 'node:path';

import type { FastifyInstance } from 'fastify';

import type { Logger } from '../../common/logger.js';
import { ChatTemplate } from '../../engine/chat-template.js';
import { readGgufMetadata } from '../../engine/gguf-metadata.js';
import { Tokenizer } from '../../engine/tokenizer.js';
import type { FrontendConfig } from '../config.js';
import { serveRegistry, watchEtcd, type Publication } from '../discovery.js';
import { ServeMetrics } from '../metrics.js';
import { Router } from '../router.js';
import { ClusterAuth } from '../security/auth.js';
import { buildApp } from './app.js';

export class Frontend {
  /** http://host:port */
  readonly url: string;
  readonly registryAddress: string | undefined;
  readonly router: Router;
  readonly #app: FastifyInstance;
  readonly #closers: (() => Promise<void>)[];
  #closing: Promise<void> | undefined;

  private constructor(url: string, registryAddress: string | undefined, router: Router, app: FastifyInstance, closers: (() => Promise<void>)[]) {
    this.url = url;
    this.registryAddress = registryAddress;
    this.router = router;
    this.#app = app;
    this.#closers = closers;
  }

  static async start(config: FrontendConfig, log: Logger): Promise<Frontend> {
    const meta = await readGgufMetadata(config.model);
    const tokenizer = Tokenizer.fromGguf(meta);
    const template = meta.has('tokenizer.chat_template') ? ChatTemplate.fromGguf(meta) : undefined;
    const contextLength = meta.getInt(`${meta.getString('general.architecture')}.context_length`);
    const modelName = config.modelName ?? basename(config.model).replace(/\.gguf$/i, '');

    const auth = ClusterAuth.fromConfig(config);
    const router = new Router({
      healthIntervalMs: config.healthIntervalMs,
      keepaliveMs: config.keepaliveMs,
      auth,
      log,
      policy: config.router,
      weights: { overlapWeight: config.routerOverlapWeight, loadWeight: config.routerLoadWeight },
    });
    for (const address of config.prefill) router.upsert(address, 'prefill', 'static');
    for (const address of config.decode) router.upsert(address, 'decode', 'static');
    const closers: (() => Promise<void>)[] = [];
    let etcd: Publication | undefined;
    let registry: Awaited<ReturnType<typeof serveRegistry>> | undefined;
    try {
      if (config.etcd?.length) {
        etcd = await watchEtcd(config.etcd, config.etcdPrefix, router, log);
        closers.push(() => etcd!.close());
      }
      if (config.registryListen) {
        registry = await serveRegistry(config.registryListen, router, auth);
        closers.push(() => registry!.close());
        log.info({ address: registry.address }, 'worker registry listening');
      }
      router.start();
      const metrics = new ServeMetrics(router);
      const app = buildApp({
        modelName,
        ...(isTinyModel(config.model) ? { modelWarning: TINY_MODEL_WARNING } : {}),
        contextLength,
        tokenizer,
        template,
        flow: {
          router,
          mode: config.mode,
          prefillTimeoutMs: config.prefillTimeoutMs,
          leaseMs: config.leaseMs,
          maxMigrations: config.maxMigrations,
          localPrefillTokens: config.router === 'kv' ? config.localPrefillTokens : 0,
          prefillSaturation: config.prefillSaturation,
          shortPromptTokens: config.shortPromptTokens,
          log,
        },
        metrics,
        requestTimeoutMs: config.requestTimeoutMs,
        bodyLimit: config.bodyLimit,
        bodyTimeoutMs: config.bodyTimeoutMs,
        maxConnections: config.maxConnections,
        maxInflight: config.maxInflight,
        log,
      });
      const [host, port] = splitHostPort(config.listen);
      await app.listen({ host, port });
      const address = app.server.address();
      const url = `http://${host === '0.0.0.0' ? '127.0.0.1' : host}:${typeof address === 'object' && address ? address.port : port}`;
      log.info({ url, model: modelName, mode: config.mode }, 'frontend listening');
      return new Frontend(url, registry?.address, router, app, closers);
    } catch (err) {
      router.close();
      for (const close of closers) await close();
      throw err;
    }
  }

  /** Resolves once every configured role has a healthy worker (health checks run every healthIntervalMs). */
  async workersReady(roles: readonly ('prefill' | 'decode')[], timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!roles.every((role) => this.router.workers().some((w) => w.role === role && w.healthy))) {
      if (Date.now() > deadline) throw new Error(`no healthy ${roles.join(' and ')} worker after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Stops accepting connections, waits for the requests in flight (streams included), then stops discovery. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#app.close();
      for (const close of this.#closers) await close();
      this.router.close();
    })();
    return this.#closing;
  }
}

export function splitHostPort(listen: string): [string, number] {
  const at = listen.lastIndexOf(':');
  return [listen.slice(0, at) || '0.0.0.0', Number(listen.slice(at + 1))];
}
