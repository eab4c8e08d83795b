// A prefill or decode worker: one fabric agent, one KV pool registered with it, one reference engine over
// that pool, and the Worker gRPC service. Every call must prove the cluster token, and a worker serves only
// its role's RPCs (ROLE_METHODS); a decode worker still prefills locally inside Decode (aggregated mode, or
// fallback when prefill fails). KV handles are signed by the worker that holds the blocks and checked by the
// one that uses them (security/handles.ts, security/hand-off.ts). The pool is not remotely accessible: a peer
// reaches a request's blocks only through the grants in its handle, which are revoked before the blocks are
// cleared and freed, so a reused block never shows another request's K/V (docs/security.md).
import { randomUUID } from 'node:crypto';
import { basename } from 'node:path';

import { Agent, type TransferReport } from '../fabric/agent.js';
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { MemoryRegion } from '../fabric/memory.js';
import type { RemotePeer } from '../fabric/peer.js';
import type { Grant } from '../fabric/grants.js';
import type { TransferDescriptor } from '../fabric/descriptors.js';
import { ReferenceEngine } from '../engine/engine.js';
import { geometryFromMsg, layoutToMsg, type KvLayout } from '../kv/layout.js';
import { contextRoom, decodeLoop } from '../engine/decode-loop.js';
import { Sampler, type SamplingOptions } from '../engine/sampling.js';
import { BlockLeases } from '../kv/leases.js';
import { blockRuns, blocksFor, kvBytesFor, planKvCopy, rangesInRuns, sameGeometry, type KvRange } from '../kv/plan.js';
import { toServiceError } from './grpc-errors.js';
import { ClusterAuth, guardService, secretFrom } from './security/auth.js';
import { PeerCache } from './peer-cache.js';
import { WorkQueue } from './work-queue.js';
import { workerFabricAddress } from './fabric-address.js';
import { endpointsOf } from '../fabric/address.js';
import { HandOffGate, type HandOff } from './security/hand-off.js';
import { HandleSigner, type HandleAccess } from './security/handles.js';
import {
  bindServer,
  grpc,
  WorkerService,
  type DecodeEvent,
  type DecodeRequest,
  type KvHandle,
  type PrefillRequest,
  type PrefillResponse,
  type ReserveRequest,
  type Sampling,
  type TransferReportMsg,
  type WorkerStatus,
} from './rpc.js';
import type { Role, WorkerConfig } from './config.js';

/**
 * How long blocks whose remote access was revoked without word from the peer (lease expired, Release call)
 * wait before reuse: a READ or WRITE the provider accepted before the revocation may still complete, and it
 * must not meet the next request's K/V. Far above any in-flight operation's remaining time (docs/security.md).
 */
const QUARANTINE_MS = 1000;

/** The RPCs each role serves; any other is refused with KVF_ERR_WRONG_ROLE before it runs. */
const ROLE_METHODS: Record<Role, ReadonlySet<string>> = {
  prefill: new Set(['Prefill', 'Release', 'Health']),
  decode: new Set(['Decode', 'Reserve', 'Release', 'Health']),
};

export class Worker {
  readonly id: string;
  readonly role: WorkerConfig['role'];
  readonly modelName: string;
  address = '';
  readonly #config: WorkerConfig;
  readonly #log: Logger;
  readonly #agent: Agent;
  readonly #region: MemoryRegion;
  readonly #engine: ReferenceEngine;
  readonly #server = new grpc.Server();
  readonly #leases: BlockLeases;
  readonly #signer: HandleSigner;
  readonly #handOffs: HandOffGate;
  readonly #peers: PeerCache;
  readonly #work: WorkQueue;
  // This agent's own blob, sent with every KV handle: its regions never change after start, so encode it once.
  readonly #metadata: Buffer;
  #inflight = 0;
  #closing: Promise<void> | undefined;

  private constructor(config: WorkerConfig, log: Logger, agent: Agent, region: MemoryRegion, engine: ReferenceEngine, signer: HandleSigner) {
    this.id = config.id;
    this.role = config.role;
    this.modelName = config.modelName ?? basename(config.model).replace(/\.gguf$/i, '');
    this.#config = config;
    this.#log = log;
    this.#agent = agent;
    this.#region = region;
    this.#engine = engine;
    this.#signer = signer;
    this.#leases = new BlockLeases({
      free: (blocks) => this.#free(blocks),
      onExpire: (requestId, blocks) => log.warn({ requestId, blocks: blocks.length }, 'lease expired: blocks were never pulled; freed'),
      quarantineMs: QUARANTINE_MS,
    });
    this.#peers = new PeerCache(agent, config.peerIdleMs);
    this.#work = new WorkQueue({ maxStreams: config.maxStreams, maxQueueMs: config.maxQueueMs });
    this.#handOffs = new HandOffGate(signer, { workerId: config.id, agentName: agent.name }, this.#leases);
    this.#metadata = agent.getLocalMetadata();
    agent.on('notification', (n) => this.#onNotification(n.from, n.data));
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
      freeBlocks: this.#closing ? 0 : this.#engine.freeBlockCount,
      inflight: this.#inflight,
      heldRequests: this.#leases.size,
      peers: this.#peers.size,
      queuedTokens: this.#work.queuedTokens,
      streams: this.#work.streams,
      prefillTokensPerS: this.#work.prefillTokensPerSecond,
      ttlMs: 0,
    };
  }

  /** Stops taking calls, lets the calls in flight finish (or cancels them after drainMs), then closes. */
  close(drainMs = 30_000): Promise<void> {
    this.#closing ??= (async () => {
      this.#log.info({ workerId: this.id, inflight: this.#inflight }, 'worker draining');
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => this.#server.forceShutdown(), drainMs);
        this.#server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      this.#leases.releaseAll();
      this.#peers.close();
      await this.#engine.close();
      await this.#agent.close();
      this.#log.info({ workerId: this.id }, 'worker closed');
    })();
    return this.#closing;
  }

  #handlers(): grpc.UntypedServiceImplementation {
    const unary =
      <Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res> | Res, counted = true) =>
      (call: grpc.ServerUnaryCall<Req, Res>, cb: grpc.sendUnaryData<Res>) => {
        if (counted) this.#inflight++;
        Promise.resolve()
          .then(() => fn(call.request, call))
          .then(
            (res) => cb(null, res),
            (err: unknown) => {
              const cancelled = (err as KvfError).code === 'KVF_ERR_CANCELLED';
              this.#log[cancelled ? 'debug' : 'warn']({ workerId: this.id, err }, 'call failed');
              cb(toServiceError(err));
            },
          )
          .finally(() => counted && this.#inflight--);
      };
    return {
      Prefill: unary((req: PrefillRequest, call) => this.#prefill(req, call)),
      Reserve: unary((req: ReserveRequest) => this.#reserve(req)),
      Release: unary((req: { requestId: string }) => ({ released: this.#leases.release(req.requestId) })),
      Health: unary(() => this.status(), false),
      Decode: (call: grpc.ServerWritableStream<DecodeRequest, DecodeEvent>) => {
        this.#inflight++;
        this.#decode(call)
          .then(
            () => call.end(),
            (err: unknown) => {
              if (!call.cancelled) this.#log.warn({ workerId: this.id, requestId: call.request.requestId, err }, 'decode failed');
              // 'error' ends the stream with this status; destroy() would drop the call without one.
              call.emit('error', toServiceError(err));
            },
          )
          .finally(() => this.#inflight--);
      },
    };
  }

  async #prefill(req: PrefillRequest, call: grpc.ServerUnaryCall<PrefillRequest, PrefillResponse>): Promise<PrefillResponse> {
    const started = performance.now();
    // A push target is checked before any work: only a handle its decode worker issued for this request.
    const pushTo = req.pushTo ? this.#signer.verify(req.pushTo, { access: 'write', requestId: req.requestId }) : null;
    const sampler = new Sampler(samplingOptions(req.sampling));
    const done = this.#work.admitPrefill(req.tokens.length, deadlineOf(call));
    let blocks: number[] = [];
    let held = false;
    try {
      blocks = this.#engine.allocateBlocks(blocksFor(this.layout, req.tokens.length));
      const logits = await this.#engine.prefill(req.tokens, blocks, 0, whileCalled(call));
      done(true);
      const firstToken = sampler.sample(logits);
      const base = { firstToken, samplerState: sampler.state, workerId: this.id, kv: null, push: null };
      const sign = (res: Omit<PrefillResponse, 'mac' | 'prefillMs'>): PrefillResponse =>
        this.#signer.signResponse({ ...res, prefillMs: performance.now() - started }, req.requestId);
      if (call.cancelled) return sign(base);
      if (pushTo) {
        try {
          return sign({ ...base, push: await this.#push(req.requestId, pushTo, blocks, req.tokens.length) });
        } catch (err) {
          // WRITEs that timed out may still read these blocks: they go back to the pool when those have ended.
          const settled = (err as KvfError).settled;
          if (settled) {
            const abandoned = blocks;
            blocks = [];
            void settled.then(() => this.#free(abandoned));
          }
          throw err;
        }
      }
      const kv = this.#holdFor(req.requestId, 'read', blocks, req.tokens.length, req.leaseMs);
      held = true;
      return sign({ ...base, kv });
    } finally {
      done(false);
      if (!held) this.#free(blocks);
    }
  }

  /** Push mode: blocks for the prompt's K/V and the first generated position; Decode grows them as it generates. */
  #reserve(req: ReserveRequest): KvHandle {
    const total = Math.min(req.tokens + 1, this.#engine.model.contextLength);
    const blocks = this.#engine.allocateBlocks(blocksFor(this.layout, total));
    try {
      return this.#holdFor(req.requestId, 'write', blocks, 0, req.leaseMs);
    } catch (err) {
      this.#free(blocks);
      throw err;
    }
  }

  /**
   * Holds blocks for a request under a lease (the caller's, or the configured one, never above this worker's
   * maximum), grants remote `access` to exactly them (one grant per run of consecutive blocks) and returns the
   * signed handle. However the hold ends, the grants are revoked first. On failure nothing stays held.
   */
  #holdFor(requestId: string, access: HandleAccess, blocks: number[], tokens: number, askedLeaseMs: number): KvHandle {
    const { expiresAt } = this.#leases.hold(requestId, blocks, Math.min(askedLeaseMs || this.#config.leaseMs, this.#config.maxLeaseMs));
    const grants: Grant[] = [];
    const revoke = (): void => grants.forEach((g) => g.revoke());
    try {
      const size = this.layout.blockBytes;
      for (const run of blockRuns(blocks)) grants.push(this.#agent.grant(this.#region, { offset: run.start * size, length: run.count * size, access }));
      const handle = this.#handle(requestId, access, blocks, tokens, expiresAt, grants);
      this.#leases.bind(requestId, handle.mac!, revoke);
      return handle;
    } catch (err) {
      revoke();
      this.#leases.take(requestId);
      throw err;
    }
  }

  /**
   * Adds a block to a sequence's table when position `pos` lies past its end. A pool without a free block
   * fails the request here with KVF_ERR_POOL_EXHAUSTED, which reaches its client at once.
   */
  #growFor(blocks: number[], pos: number): void {
    if (pos >= blocks.length * this.layout.tokensPerBlock) blocks.push(...this.#engine.allocateBlocks(1));
  }

  /**
   * After a transfer that timed out, its READs may still land in `blocks`: the sequence moves to fresh blocks (the
   * array is updated in place) and the old ones return to the pool only once the abandoned transfer has ended.
   */
  #replaceAbandoned(blocks: number[], err: unknown): void {
    const settled = (err as KvfError).settled;
    if (!settled) return;
    const abandoned = blocks.splice(0, blocks.length, ...this.#engine.allocateBlocks(blocks.length));
    void settled.then(() => this.#free(abandoned));
  }

  /** Returns blocks to the pool, cleared: whatever the next request leaves unwritten reads as zeros, not as this one's K/V. */
  #free(blocks: number[]): void {
    const size = this.layout.blockBytes;
    for (const b of blocks) this.#region.bytes.fill(0, b * size, (b + 1) * size);
    this.#engine.freeBlocks(blocks);
  }

  async #decode(call: grpc.ServerWritableStream<DecodeRequest, DecodeEvent>): Promise<void> {
    const req = call.request;
    const live = whileCalled(call);
    const ctx = this.#engine.model.contextLength;
    const resumed = req.generated.length;
    if (req.prompt.length === 0) {
      throw new KvfError('KVF_ERR_CONTEXT_OVERFLOW', `the prompt has 0 tokens (and ${resumed} generated); the context holds ${ctx}`);
    }
    contextRoom(ctx, req.prompt.length, resumed);
    if (resumed > 0 && (req.prefill || req.reserved))
      throw new KvfError('KVF_ERR_BAD_REQUEST', 'a resumed Decode carries no prefill result or reservation: this worker rebuilds the K/V itself');
    const handOff = this.#handOffs.check(req);
    const streamEnded = this.#work.admitStream();
    let blocks = req.reserved ? this.#leases.take(req.requestId) : undefined;
    // The sequence so far and the next position; the rest grows with generation (#growFor), so a request that
    // may generate up to the context does not hold the whole context's blocks from its start.
    const start = req.prompt.length + resumed;
    blocks ??= this.#engine.allocateBlocks(blocksFor(this.layout, Math.min(start + 1, ctx)));
    try {
      const first = await this.#begin(req, handOff, blocks, live);
      if (call.cancelled) return;
      const { sampler } = first;
      const token = first.token;
      call.write({
        event: 'started',
        started: { workerId: this.id, transfer: first.transfer, localPrefill: first.transfer === null, fallbackReason: first.fallbackReason },
      });
      const ends = new Set(req.endTokens);
      let done = { finishReason: 'length' as 'stop' | 'length', count: 0 };
      // The first token: the client has it already when a prefill worker sampled it.
      if (ends.has(token)) done.finishReason = 'stop';
      else if (token >= 0) {
        if (!first.delivered) call.write({ event: 'token', token, samplerState: sampler.state });
        done = await decodeLoop({
          engine: this.#engine,
          sampler,
          blocks,
          token,
          pos: start,
          count: 1,
          maxTokens: req.maxTokens,
          end: Math.min(start + req.maxTokens, ctx),
          ends,
          grow: (pos) => this.#growFor(blocks, pos),
          signal: live,
          onToken: (t) => {
            call.write({ event: 'token', token: t, samplerState: sampler.state });
            return true;
          },
        });
      }
      if (!call.cancelled) call.write({ event: 'done', done: { finishReason: done.finishReason, completionTokens: done.count } });
    } finally {
      streamEnded();
      this.#free(blocks);
    }
  }

  /**
   * The K/V of the sequence so far in `blocks` and the token after it: pulled or pushed from a prefill worker
   * (whose first token it is), else computed here — the prompt, then (resuming a migrated request) one pass per
   * token the client already has, as the worker before computed them. `delivered`: the client has that token
   * already (a prefill worker sampled it, also when its K/V could not be pulled and is rebuilt here). `token` is
   * -1 when a resumed sequence already fills the context.
   */
  async #begin(
    req: DecodeRequest,
    handOff: HandOff,
    blocks: number[],
    live: AbortSignal,
  ): Promise<{ token: number; delivered: boolean; sampler: Sampler; transfer: TransferReportMsg | null; fallbackReason: string }> {
    let transfer: TransferReportMsg | null = null;
    let fallbackReason = req.fallbackReason;
    if (handOff === 'pull') {
      try {
        transfer = await this.#pull(req.requestId, req.prefill!.kv!, blocks);
      } catch (err) {
        // The code leads, so that a client (and a test) can tell a partition (KVF_ERR_TIMEOUT) from a misconfigured peer.
        const code = (err as KvfError).code;
        fallbackReason = `pulling KV from ${req.prefill!.workerId} failed: ${code ? `${code}: ` : ''}${(err as Error).message}`;
        this.#log.warn({ workerId: this.id, requestId: req.requestId, err }, 'KV pull failed; prefilling locally');
        this.#replaceAbandoned(blocks, err);
      }
    } else if (handOff === 'push') {
      transfer = req.prefill!.push;
    }
    const prefilled = req.prefill
      ? { token: req.prefill.firstToken, delivered: true, sampler: new Sampler({ ...samplingOptions(req.sampling), state: req.prefill.samplerState }) }
      : undefined;
    if (prefilled && transfer) return { ...prefilled, transfer, fallbackReason };
    const resumed = req.generated;
    const sampler = new Sampler({ ...samplingOptions(req.sampling), ...(resumed.length > 0 ? { state: req.samplerState } : {}) });
    const done = this.#work.admitPrefill(req.prompt.length, Infinity);
    try {
      let logits = await this.#engine.prefill(req.prompt, blocks, 0, live);
      done(true);
      if (prefilled) return { ...prefilled, transfer, fallbackReason };
      for (let i = 0; i < resumed.length; i++) {
        const pos = req.prompt.length + i;
        if (pos + 1 >= this.#engine.model.contextLength) return { token: -1, delivered: true, sampler, transfer, fallbackReason };
        this.#growFor(blocks, pos);
        logits = await this.#engine.decode(resumed[i]!, blocks, pos, live);
      }
      return { token: sampler.sample(logits), delivered: false, sampler, transfer, fallbackReason };
    } finally {
      done(false);
    }
  }

  /** Pull mode: RDMA READ of the prompt's K/V from the prefill worker's blocks into ours; the notification tells it to free them. */
  async #pull(requestId: string, kv: KvHandle, blocks: number[]): Promise<TransferReportMsg> {
    const ranges = planKvCopy(this.layout, kv.blocks, blocks, kv.tokens);
    const notification = JSON.stringify({ release: requestId, mac: Buffer.from(kv.mac!).toString('hex') });
    const report = await this.#throughGrants(kv, ranges, 'src', (peer, descs) =>
      this.#agent.read(peer, descs, { notification, timeoutMs: this.#config.transferTimeoutMs }),
    );
    return this.#report(requestId, report, kv.workerId, kv.tokens);
  }

  /** Push mode: RDMA WRITE of the prompt's K/V into blocks the decode worker reserved. */
  async #push(requestId: string, target: KvHandle, blocks: number[], tokens: number): Promise<TransferReportMsg> {
    const ranges = planKvCopy(this.layout, blocks, target.blocks, tokens);
    const report = await this.#throughGrants(target, ranges, 'dst', (peer, descs) =>
      this.#agent.write(peer, descs, { timeoutMs: this.#config.transferTimeoutMs }),
    );
    return this.#report(requestId, report, target.workerId, tokens);
  }

  /**
   * Runs a transfer to the blocks a peer's handle names, through the grants it carries (its pool itself is not
   * remotely accessible): the grants are added to the peer for this transfer only. `side` says which side of
   * `ranges` is the peer's.
   */
  async #throughGrants(
    kv: KvHandle,
    ranges: KvRange[],
    side: 'src' | 'dst',
    run: (peer: RemotePeer, descs: TransferDescriptor[]) => Promise<TransferReport>,
  ): Promise<TransferReport> {
    this.#checkLayout(kv);
    const runs = blockRuns(kv.blocks);
    if (kv.grants.length !== runs.length)
      throw new KvfError('KVF_ERR_BAD_HANDLE', `the KV handle carries ${kv.grants.length} grants for ${runs.length} runs of blocks`);
    const peer = this.#peers.use(kv.agentName, kv.agentMetadata);
    const ids: number[] = [];
    try {
      for (const g of kv.grants) ids.push(peer.addGrant(g));
      const descs = rangesInRuns(ranges, side, runs, this.layout.blockBytes).map((r) => ({
        local: this.#region,
        localOffset: r.otherOffset,
        remote: ids[r.run]!,
        remoteOffset: r.runOffset,
        length: r.length,
      }));
      return await run(peer, descs);
    } finally {
      for (const id of ids) peer.removeGrant(id);
    }
  }

  #report(requestId: string, report: TransferReport, peerWorker: string, tokens: number): TransferReportMsg {
    const msg = {
      op: report.op,
      backend: report.backend,
      provider: report.provider,
      rails: report.rails,
      bytes: report.bytes,
      durationMs: report.durationMs,
      descriptors: report.descriptors,
      initiator: this.id,
      path: report.path,
    };
    this.#log.info({ requestId, workerId: this.id, peerWorker, ...msg, gbps: report.gbps, expectedBytes: kvBytesFor(this.layout, tokens) }, 'kv transfer');
    return msg;
  }

  #checkLayout(kv: KvHandle): void {
    const theirs = geometryFromMsg(kv.layout);
    if (!theirs || !sameGeometry(theirs, this.layout)) {
      throw new KvfError(
        'KVF_ERR_LAYOUT_MISMATCH',
        `worker ${kv.workerId} holds K/V as ${JSON.stringify(theirs)}; this worker as ${JSON.stringify(this.layout)}`,
      );
    }
  }

  /** A signed handle to blocks this worker holds for a request, with the grants that reach them. */
  #handle(requestId: string, access: HandleAccess, blocks: number[], tokens: number, expiresAt: number, grants: Grant[]): KvHandle {
    return this.#signer.sign({
      requestId,
      workerId: this.id,
      agentName: this.#agent.name,
      agentMetadata: this.#metadata,
      regionId: this.#region.id,
      blocks,
      layout: layoutToMsg(this.layout),
      tokens,
      leaseExpiresUnixMs: expiresAt,
      access,
      grants: grants.map((g) => g.bytes),
    });
  }

  /** A puller's "done, free them": honoured only with the MAC of the handle the blocks were issued under. */
  #onNotification(from: string, data: Uint8Array): void {
    let msg: { release?: unknown; mac?: unknown } = {};
    try {
      msg = JSON.parse(Buffer.from(data).toString('utf8')) as typeof msg;
    } catch {
      // Not ours to understand; notifications come from the network.
    }
    const { release: requestId, mac } = msg;
    if (typeof requestId !== 'string' || typeof mac !== 'string' || !/^[0-9a-f]{64}$/.test(mac)) return;
    if (this.#leases.matches(requestId, Buffer.from(mac, 'hex')) && this.#leases.release(requestId, true)) {
      this.#log.debug({ workerId: this.id, requestId, from }, 'blocks pulled; freed');
    }
  }
}

/**
 * Aborted when the call is cancelled (the caller's deadline passed, or it went away): the engine then drops the
 * call's queued forward passes and stops a running one at its next layer, so no work outlives its request.
 */
function whileCalled(call: { cancelled: boolean; once(event: 'cancelled', listener: () => void): unknown }): AbortSignal {
  const ac = new AbortController();
  if (call.cancelled) ac.abort();
  else call.once('cancelled', () => ac.abort());
  return ac.signal;
}

/** A call's deadline in ms since the epoch (Infinity when the caller set none). */
function deadlineOf(call: { getDeadline(): grpc.Deadline }): number {
  const d = call.getDeadline();
  return d instanceof Date ? d.getTime() : d;
}

function samplingOptions(s: Sampling | null): SamplingOptions {
  if (!s) return {};
  return { temperature: s.temperature, topK: s.topK, topP: s.topP || 1, seed: s.seed };
}
