// A prefill or decode worker: one fabric agent, one KV pool registered with it, one reference engine over
// that pool, and the Worker gRPC service. Every call must prove the cluster token, and a worker serves only
// its role's RPCs (ROLE_METHODS); a decode worker still prefills locally inside Decode (aggregated mode, or
// fallback when prefill fails). KV handles are signed by the worker that holds the blocks and checked by the
// one that uses them (security/handles.ts, security/hand-off.ts). This module starts, serves, reports and
// drains the worker; the RPCs are in worker-prefill.ts and worker-decode.ts, the pool's blocks, grants,
// handles and transfers in worker-kv.ts, and admission in work-queue.ts.
import { randomUUID } from 'node:crypto';
import { basename } from 'node:path';

import { Agent } from '../fabric/agent.js';
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { ATTR, extractMetadata, NOT_TRACED, rpcAttributes, spanFailed, SpanKind, startTraced, type Traced } from '../common/tracing.js';
import type { MemoryRegion } from '../fabric/memory.js';
import { ReferenceEngine, type BatchStats } from '../engine/engine.js';
import type { KvLayout } from '../kv/layout.js';
import type { PrefixCacheStats } from '../kv/prefix-cache.js';
import { toServiceError } from './grpc-errors.js';
import { ClusterAuth, guardService, secretFrom } from './security/auth.js';
import { WorkQueue } from './work-queue.js';
import { workerFabricAddress } from './fabric-address.js';
import { endpointsOf } from '../fabric/address.js';
import { HandOffGate } from './security/hand-off.js';
import { HandleSigner } from './security/handles.js';
import {
  bindServer,
  grpc,
  WorkerService,
  type DecodeEvent,
  type DecodeRequest,
  type KvEvent,
  type KvHandle,
  type PrefillRequest,
  type ReserveRequest,
  type WorkerStatus,
} from './rpc.js';
import type { Role, WorkerConfig } from './config.js';
import type { WorkerParts } from './worker-call.js';
import { decode } from './worker-decode.js';
import { WorkerKv } from './worker-kv.js';
import { prefill, reserve } from './worker-prefill.js';

/** The RPCs each role serves; any other is refused with KVF_ERR_WRONG_ROLE before it runs. */
const ROLE_METHODS: Record<Role, ReadonlySet<string>> = {
  prefill: new Set(['Prefill', 'Release', 'Health', 'KvEvents']),
  decode: new Set(['Decode', 'Reserve', 'Release', 'Health', 'KvEvents']),
};

export class Worker {
  readonly id: string;
  readonly role: WorkerConfig['role'];
  readonly modelName: string;
  address = '';
  readonly #log: Logger;
  readonly #agent: Agent;
  readonly #engine: ReferenceEngine;
  readonly #server = new grpc.Server();
  readonly #kv: WorkerKv;
  readonly #work: WorkQueue;
  readonly #parts: WorkerParts;
  #inflight = 0;
  #closing: Promise<void> | undefined;
  // Open KV event streams, ended when the worker starts draining (they would hold the server's shutdown open).
  readonly #eventStreams = new Set<() => void>();

  private constructor(config: WorkerConfig, log: Logger, agent: Agent, region: MemoryRegion, engine: ReferenceEngine, signer: HandleSigner) {
    this.id = config.id;
    this.role = config.role;
    this.modelName = config.modelName ?? basename(config.model).replace(/\.gguf$/i, '');
    this.#log = log;
    this.#agent = agent;
    this.#engine = engine;
    this.#kv = new WorkerKv(config, log, agent, region, engine, signer, this.modelName);
    this.#work = new WorkQueue({ maxStreams: config.maxStreams, maxQueueMs: config.maxQueueMs });
    const handOffs = new HandOffGate(signer, { workerId: config.id, agentName: agent.name }, this.#kv.leases);
    this.#parts = { id: this.id, log, engine, work: this.#work, kv: this.#kv, signer, handOffs };
  }

  static async start(config: WorkerConfig, log: Logger): Promise<Worker> {
    // Credentials first: a worker without them must not open a fabric agent or a port.
    const auth = ClusterAuth.fromConfig(config);
    const signer = new HandleSigner(secretFrom('handle key', config.handleKey, config.handleKeyFile, 'KVF_HANDLE_KEY', '--handle-key-file'));
    const fabric = workerFabricAddress(config);
    const agent = await Agent.create({
      name: `${config.id}-${randomUUID().slice(0, 8)}`,
      logger: log,
      ...(config.provider !== undefined ? { provider: config.provider } : {}),
      ...(config.rails !== undefined ? { rails: config.rails } : {}),
      ...(config.busyPollUs !== undefined ? { busyPollUs: config.busyPollUs } : {}),
      ...(fabric.address !== undefined ? { address: fabric.address } : {}),
    });
    try {
      const layoutOptions = { tokensPerBlock: config.tokensPerBlock, dtype: config.kvDtype };
      const blockBytes = ReferenceEngine.blockBytes(config.model, layoutOptions);
      // Not remotely accessible as a whole: peers reach only the blocks of a request, through its grants.
      const region = agent.allocate(config.blocks * blockBytes, { hugepages: config.hugepages, remoteAccess: false });
      const engine = new ReferenceEngine({
        modelPath: config.model,
        pool: region.bytes,
        ...layoutOptions,
        ...(config.threads !== undefined ? { threads: config.threads } : {}),
        maxBatchSequences: config.maxBatchSequences,
        maxStepTokens: config.maxStepTokens,
      });
      // The seed's proof lines, printed only now that LIBFABRIC is what will carry this worker's KV.
      if (agent.backend === 'LIBFABRIC') {
        log.info("NIXL Connect: Using backend(s): ['LIBFABRIC']");
        log.info('Backend LIBFABRIC was instantiated');
      }
      const worker = new Worker(config, log, agent, region, engine, signer);
      const allowed = (method: string): KvfError | undefined =>
        ROLE_METHODS[worker.role].has(method) ? undefined : new KvfError('KVF_ERR_WRONG_ROLE', `${method} is not served by a ${worker.role} worker`);
      worker.#server.addService(WorkerService, guardService(auth, WorkerService, worker.#handlers(), toServiceError, allowed));
      worker.address = await bindServer(worker.#server, config.listen, auth);
      log.info(
        {
          workerId: worker.id,
          role: worker.role,
          address: worker.address,
          provider: agent.provider,
          rails: agent.rails,
          fabricAddresses: endpointsOf(agent.provider, agent.info.addresses),
          fabricAddressFrom: fabric.source,
          blocks: engine.layout.numBlocks,
          blockBytes,
        },
        'worker ready',
      );
      return worker;
    } catch (err) {
      await agent.close();
      throw err;
    }
  }

  get layout(): KvLayout {
    return this.#engine.layout;
  }

  status(): WorkerStatus {
    return {
      workerId: this.id,
      role: this.role,
      address: this.address,
      model: this.modelName,
      backend: this.#agent.backend,
      provider: this.#agent.provider,
      rails: this.#agent.rails,
      totalBlocks: this.#engine.layout.numBlocks,
      inflight: this.#inflight,
      heldRequests: this.#kv.leases.size,
      peers: this.#kv.peers.size,
      queuedTokens: this.#work.queuedTokens,
      streams: this.#work.streams,
      prefillTokensPerS: this.#work.prefillTokensPerSecond,
      ...batchStatus(this.#engine.stats),
      ...cacheStatus(this.#kv.cache?.stats),
      // Idle cached blocks count as free: any request may have them (they are evicted on demand).
      freeBlocks: this.#closing ? 0 : this.#kv.available,
      ttlMs: 0,
    };
  }

  /** Stops taking calls, lets the calls in flight finish (or cancels them after drainMs), then closes. */
  close(drainMs = 30_000): Promise<void> {
    this.#closing ??= (async () => {
      this.#log.info({ workerId: this.id, inflight: this.#inflight }, 'worker draining');
      for (const end of [...this.#eventStreams]) end();
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => this.#server.forceShutdown(), drainMs);
        this.#server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      this.#kv.leases.releaseAll();
      this.#kv.peers.close();
      await this.#engine.close();
      await this.#agent.close();
      this.#log.info({ workerId: this.id }, 'worker closed');
    })();
    return this.#closing;
  }

  /**
   * A frontend's KV event stream: the full snapshot of the prefix cache first, then what it stores and evicts,
   * until the frontend cancels (or this worker closes).
   */
  #kvEvents(call: grpc.ServerWritableStream<Record<string, never>, KvEvent>): void {
    const base = { salt: this.#kv.cache?.salt ?? '', tokensPerBlock: this.#engine.layout.tokensPerBlock };
    const { snapshot, unsubscribe } = this.#kv.subscribe((ev) => call.write({ snapshot: false, ...ev, ...base }));
    call.write({ snapshot: true, stored: snapshot, evicted: [], ...base });
    const end = (): void => {
      if (!this.#eventStreams.delete(end)) return;
      unsubscribe();
      call.end();
    };
    this.#eventStreams.add(end);
    call.once('cancelled', end);
    call.once('error', end);
  }

  /** The SERVER span of a call, child of the caller's span when the call carried its trace context. */
  #serverSpan(method: string, call: { metadata: grpc.Metadata; request: unknown }): Traced {
    return startTraced(method.toLowerCase(), extractMetadata(call.metadata), SpanKind.SERVER, () => ({
      ...rpcAttributes(method),
      [ATTR.workerId]: this.id,
      [ATTR.role]: this.role,
      [ATTR.requestId]: (call.request as { requestId?: string }).requestId ?? '',
    }));
  }

  #handlers(): grpc.UntypedServiceImplementation {
    /** `traced`: the RPC's name, when its calls get a span (a request's work; not Health nor Release). */
    const unary =
      <Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>, trace: Traced) => Promise<Res> | Res, counted = true, traced?: string) =>
      (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
        if (counted) this.#inflight++;
        const trace = traced ? this.#serverSpan(traced, call) : NOT_TRACED;
        Promise.resolve()
          .then(() => fn(call.request, call, trace))
          .then(
            (res) => cb(null, res),
            (err: unknown) => {
              const cancelled = (err as KvfError).code === 'KVF_ERR_CANCELLED';
              this.#log[cancelled ? 'debug' : 'warn']({ workerId: this.id, err }, 'call failed');
              spanFailed(trace.span, err);
              cb(toServiceError(err));
            },
          )
          .finally(() => {
            trace.span.end();
            if (counted) this.#inflight--;
          });
      };
    return {
      Prefill: unary((req: PrefillRequest, call, trace) => prefill(this.#parts, req, call, trace), true, 'Prefill'),
      Reserve: unary(
        (req: ReserveRequest, call: grpc.ServerUnaryCall<ReserveRequest, KvHandle>, trace) => reserve(this.#parts, req, call, trace),
        true,
        'Reserve',
      ),
      Release: unary((req: { requestId: string }) => ({ released: this.#kv.leases.release(req.requestId) })),
      Health: unary(() => this.status(), false),
      KvEvents: (call: grpc.ServerWritableStream<Record<string, never>, KvEvent>) => this.#kvEvents(call),
      Decode: (call: grpc.ServerWritableStream<DecodeRequest, DecodeEvent>) => {
        this.#inflight++;
        const trace = this.#serverSpan('Decode', call);
        decode(this.#parts, call, trace)
          .then(
            () => call.end(),
            (err: unknown) => {
              if (!call.cancelled) this.#log.warn({ workerId: this.id, requestId: call.request.requestId, err }, 'decode failed');
              spanFailed(trace.span, err);
              // 'error' ends the stream with this status; destroy() would drop the call without one.
              call.emit('error', toServiceError(err));
            },
          )
          .finally(() => {
            trace.span.end();
            this.#inflight--;
          });
      },
    };
  }
}

function cacheStatus(
  s: PrefixCacheStats | undefined,
): Pick<WorkerStatus, 'cachedBlocks' | 'idleCachedBlocks' | 'cacheLookups' | 'cacheHits' | 'cacheEvictions'> {
  return {
    cachedBlocks: s?.blocks ?? 0,
    idleCachedBlocks: s?.idle ?? 0,
    cacheLookups: s?.lookups ?? 0,
    cacheHits: s?.hits ?? 0,
    cacheEvictions: s?.evictions ?? 0,
  };
}

function batchStatus(
  s: BatchStats,
): Pick<
  WorkerStatus,
  | 'engineSteps'
  | 'stepSequences'
  | 'stepTokens'
  | 'batchSequences'
  | 'stepTokensLast'
  | 'maxBatchSequences'
  | 'maxStepTokens'
  | 'waitingPasses'
  | 'stepSeconds'
  | 'handOffSeconds'
  | 'decodeSteps'
  | 'decodeStepSeconds'
> {
  return {
    engineSteps: s.steps,
    stepSequences: s.sequences,
    stepTokens: s.tokens,
    batchSequences: s.lastSequences,
    stepTokensLast: s.lastTokens,
    maxBatchSequences: s.maxBatchSequences,
    maxStepTokens: s.maxStepTokens,
    waitingPasses: s.waiting,
    stepSeconds: s.stepSeconds,
    handOffSeconds: s.handOffSeconds,
    decodeSteps: s.decodeSteps,
    decodeStepSeconds: s.decodeStepSeconds,
  };
}
