// Agent: one process's endpoint on the fabric. It registers memory, exchanges metadata with peers, and
// moves bytes with one-sided READ/WRITE. The addon does the fabric work on its own threads; this class
// shapes the API, keeps promises, and turns completion batches into resolved transfers and notifications.
import { EventEmitter } from 'node:events';

import { endpointsOf } from './address.js';
import { resolveBackend, requestedProvider, type Backend } from './config.js';
import { packDescriptors, type TransferDescriptor } from './descriptors.js';
import { KvfError, fromNative } from '../common/errors.js';
import { defaultLogger, type Logger } from '../common/logger.js';
import {
  MemoryRegion,
  allocateBytes,
  checkAllocateOptions,
  isDeviceMemoryInput,
  toBytes,
  type AllocateOptions,
  type DeviceMemoryInput,
  type MemoryInput,
  type RegionOwner,
} from './memory.js';
import { decodeMetadata, encodeMetadata, type AgentDescription } from './metadata.js';
import { CompletionPoller } from './completion-poller.js';
import { RECORD_FIELD as F, RECORD_HEADER, RECORD_HEADER_SIZE, RECORD_STRIDE, newRecordsBuffer } from './records.js';
import { addon, type NativeAgent, type NativeAgentInfo, type NativeErrorObject, type NativeEvent, type NativeRegion } from './native.js';
import { NotificationQueue, type Notification } from './notifications.js';
import { RemotePeer, type GrantReader } from './peer.js';
import type { Grant } from './grants.js';
import { GRANT_OPTION_KEYS, GrantBook, type GrantOptions } from './grant-book.js';
import { PreparedTransfer, type PreparedOwner } from './prepared.js';
import { fastPathEnabled } from './host.js';
import {
  POST_OPTION_KEYS,
  TRANSFER_OPTION_KEYS,
  checkAgentOptions,
  notificationBytes,
  openNativeAgent,
  type AgentOptions,
  type PostOptions,
  type TransferOptions,
} from './agent-options.js';
import { checkOptionKeys } from './options.js';
import { readReport, type Posted, type TransferOp, type TransferReport } from './transfer-report.js';
import { checkPeer, localDescription, logRefusedPaths, sameHostArg } from './metadata-exchange.js';
import { KeepAlive, armTimeout, type Pending } from './in-flight.js';
import { AgentDevices } from './agent-devices.js';
import { DeviceRegion } from './device-region.js';
import { stagingOptions } from './staging-options.js';

// The API's types live with what reads them; they are exported from here too, where users of Agent look.
export type { AgentOptions, AllocateOptions, PostOptions, TransferOptions, TransferOp, TransferReport };

export interface AgentEvents {
  notification: [Notification];
}

export class Agent extends EventEmitter<AgentEvents> implements RegionOwner, PreparedOwner, GrantReader {
  readonly name: string;
  readonly backend: Backend;
  readonly provider: string;
  readonly fabric: string;
  readonly domains: readonly string[];
  readonly info: Readonly<NativeAgentInfo>;

  #native: NativeAgent;
  #pending = new Map<number, Pending>();
  #regions = new Map<number, MemoryRegion>();
  #grants: GrantBook;
  #peers = new Map<string, RemotePeer>();
  // Where each loaded peer's rails listen ('10.0.0.5:39181'), for messages: a timeout names the address it waited on.
  #endpoints = new Map<string, string>();
  #hold: KeepAlive;
  #notifications = new NotificationQueue(
    () => this.#hold.ref(),
    () => this.#hold.unref(),
  );
  #closeTimeoutMs: number;
  // 'closing' from close() until the addon's 'closed' event, which ends every state ('closed').
  #state: 'open' | 'closing' | 'closed' = 'open';
  #whenClosed?: Promise<void>; // what close() returns, every time
  #resolveClosed?: () => void;
  #log: Logger | undefined;
  #fastPath: boolean;
  #poller: CompletionPoller | undefined;
  // Shared with the addon, which writes completions into it (records.ts).
  #records: Float64Array;
  #devices: AgentDevices;

  private constructor(native: NativeAgent, records: Float64Array, backend: Backend, options: AgentOptions, log: Logger | undefined) {
    super();
    this.#native = native;
    this.#hold = new KeepAlive(native, this);
    this.#records = records;
    this.backend = backend;
    this.info = Object.freeze(native.info());
    this.name = this.info.name;
    this.provider = this.info.provider;
    this.fabric = this.info.fabric;
    this.domains = Object.freeze([...this.info.domains]);
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 10_000;
    this.#fastPath = fastPathEnabled(options.fastPath);
    // The poller also delivers small same-host copies, which run inside the post call (even on shm).
    this.#poller =
      options.expressMaxBytes === 0
        ? undefined
        : new CompletionPoller(
            (spinUs) => native.reap(spinUs),
            () => this.#pending.size,
            () => this.#state === 'closed',
          );
    this.#log = log;
    this.#grants = new GrantBook(native, this.name, this.info.regionTable?.nonce ?? new Uint8Array(16), () => this.#state !== 'closed');
    this.#devices = new AgentDevices(
      {
        name: this.name,
        backend,
        provider: this.provider,
        log,
        allocateHost: (length) => this.allocate(length, { remoteAccess: false, shared: false }),
        grant: (region, o) => this.grant(region, o),
        hostTransfer: (op, p, d, timeoutMs, note) => this.#postHost(op, p, d, timeoutMs, note),
        sendNotification: (p, data, timeoutMs) => this.#notifyPeer(p, data, timeoutMs),
        hostRegion: (local) => this.#hostRegion(local),
        registerWithFabric: this.info.hmem
          ? (memory, length, device, remoteAccess) => this.#call(() => native.registerDevice(memory, length, device, remoteAccess))
          : undefined,
        deregisterFromFabric: (id) => this.#call(() => native.deregisterMemory(id)),
      },
      stagingOptions(options.staging),
    );
  }

  static async create(options: AgentOptions): Promise<Agent> {
    checkAgentOptions(options);
    const backend = resolveBackend(options.backend);
    const log = options.logger === false ? undefined : (options.logger ?? defaultLogger());
    const wanted = requestedProvider(options.provider);
    // The events callback is bound late: the native agent exists before the Agent that handles its events.
    let target: Agent | undefined;
    const onEvents = (events: NativeEvent[] | undefined, records: Float64Array) => {
      if (target) target.#deliver(events, records);
    };
    const records = newRecordsBuffer();
    const native = openNativeAgent(options, wanted, onEvents, records);
    target = new Agent(native, records, backend, options, log);
    log?.info(
      {
        agent: target.name,
        backend,
        provider: target.provider,
        fabric: target.fabric,
        domains: target.domains,
        rails: target.domains.length,
        libfabric: addon.libfabricVersion(),
      },
      `kvfabric agent ready: backend ${backend}, provider ${target.provider}, fabric ${target.fabric}, ` + `domain ${target.domains.join(',')}`,
    );
    return target;
  }

  get closed(): boolean {
    return this.#state !== 'open';
  }

  get rails(): number {
    return this.domains.length;
  }

  /** Transfers and notifications posted and not yet finished. */
  get inFlight(): number {
    return this.#pending.size;
  }

  // ---- memory -------------------------------------------------------------------------------------

  /**
   * Registers memory with every rail. The buffer is pinned (kept alive) until deregister() or close().
   * `remoteAccess: false` keeps the region out of getLocalMetadata(): usable as a local source or sink only.
   */
  registerMemory(memory: MemoryInput, options?: { remoteAccess?: boolean }): MemoryRegion;
  /** Device memory someone else owns (a device pointer, its length and 'cuda:N'), checked with the CUDA driver. */
  registerMemory(memory: DeviceMemoryInput, options?: { remoteAccess?: boolean }): DeviceRegion;
  registerMemory(memory: MemoryInput | DeviceMemoryInput, options: { remoteAccess?: boolean } = {}): MemoryRegion | DeviceRegion {
    this.#assertOpen();
    checkOptionKeys(options, ['remoteAccess'], 'registerMemory');
    if (isDeviceMemoryInput(memory)) {
      const { ptr, length, device } = memory;
      return this.#devices.register(ptr, length, device, options.remoteAccess ?? true);
    }
    const bytes = toBytes(memory);
    const remoteAccess = options.remoteAccess ?? true;
    const id = this.#call(() => this.#native.registerMemory(bytes, remoteAccess));
    const region = new MemoryRegion(this, id, bytes, remoteAccess);
    this.#regions.set(id, region);
    return region;
  }

  /**
   * Allocates page-aligned memory in the addon and registers it: reserved 2 MiB hugepages when asked (true = if
   * available, 'require' = or fail), else 2 MiB-aligned memory (from 2 MiB up) advised for transparent hugepages,
   * which makes cross-memory attach and registration pin 512× fewer pages.
   *
   * `shared` memory (a memfd) can be mapped by peers on the same host, whose transfers then copy it with one
   * memcpy (reports say `path: 'mapped'`), a fraction of what cross-memory attach costs a small READ (figures:
   * docs/design.md, "Same-host fast path"). 'auto' (default) shares where the shared memory is hugepages too:
   * reserved ones when `hugepages` is asked and available, or transparent ones where the kernel gives them to
   * shared memory (shmem_enabled). Elsewhere shared memory is 4 KiB pages and large copies run slower, so true
   * is then a choice for small transfers.
   */
  allocate(length: number, options: AllocateOptions & { device: string }): DeviceRegion;
  allocate(length: number, options?: AllocateOptions): MemoryRegion;
  allocate(length: number, options: AllocateOptions = {}): MemoryRegion | DeviceRegion {
    this.#assertOpen();
    if (options?.device !== undefined) {
      checkAllocateOptions(options);
      return this.#devices.allocate(length, options.device, options.remoteAccess ?? true);
    }
    const { bytes, hugepages, shared } = this.#call(() => allocateBytes(length, options));
    const remoteAccess = options.remoteAccess ?? true;
    const id = this.#call(() => this.#native.registerMemory(bytes, remoteAccess));
    const region = new MemoryRegion(this, id, bytes, remoteAccess, hugepages, shared);
    this.#regions.set(id, region);
    return region;
  }

  /** @internal called by MemoryRegion.deregister(). */
  deregisterRegion(region: MemoryRegion): void {
    this.#assertOpen();
    if (this.#regions.get(region.id) !== region) {
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `region ${region.id} does not belong to agent ${this.name}`);
    }
    this.#call(() => this.#native.deregisterMemory(region.id));
    this.#regions.delete(region.id);
    this.#grants.endRegion(region.id); // the addon ended them with the region
  }

  // ---- grants -------------------------------------------------------------------------------------

  /**
   * Lets one peer READ (or WRITE) exactly [offset, offset + length) of `region` until revoke(): the range is
   * registered again on every rail with fresh random keys and only that remote flag, and published in the
   * region table for same-host readers. The region may be registered with `remoteAccess: false`. Hand
   * `grant.bytes` to the peer (remotePeer.addGrant). Live grants share the table with remotely accessible
   * regions (2^18 in all; KVF_ERR_TOO_LARGE beyond). A grant ends with its region or the agent.
   */
  grant(region: MemoryRegion, options: GrantOptions): Grant {
    this.#assertOpen();
    if (!(region instanceof MemoryRegion) || this.#regions.get(region.id) !== region) {
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `grant() needs a region registered with agent ${this.name}`);
    }
    checkOptionKeys(options, GRANT_OPTION_KEYS, 'grant');
    return this.#call(() => this.#grants.create(region.id, options));
  }

  /** Grants live now. */
  get liveGrants(): number {
    return this.#grants.size;
  }

  /** @internal RemotePeer.addGrant(). */
  addPeerGrant(peer: RemotePeer, bytes: Uint8Array): number {
    this.#assertOpen();
    const p = this.#peer(peer);
    return this.#call(() => this.#grants.addToPeer(p, bytes), { peer: p.name });
  }

  /** @internal RemotePeer.removeGrant(). */
  removePeerGrant(peer: RemotePeer, id: number): void {
    this.#assertOpen();
    const p = this.#peer(peer);
    this.#call(() => this.#native.removeGrant(p.id, id), { peer: p.name });
  }

  // ---- metadata -----------------------------------------------------------------------------------

  /** Versioned, checksummed blob with this agent's endpoint addresses and remotely accessible regions. */
  getLocalMetadata(): Buffer {
    this.#assertOpen();
    const regions = this.#call(() => this.#native.regions()).filter((r) => this.#regions.get(r.id)?.remoteAccess);
    return encodeMetadata({ ...localDescription(this.info, regions), ...this.#devices.describe() });
  }

  /** Parses a peer's blob (strictly; it came from the network) and connects every rail to every peer rail. */
  loadRemoteMetadata(blob: Uint8Array): RemotePeer {
    this.#assertOpen();
    const desc = decodeMetadata(blob);
    checkPeer(desc, this.info);
    // Add the new peer first: if the blob is refused, the peer loaded before stays usable.
    const hostArg = sameHostArg(desc, this.#fastPath);
    const fabricRegions = [...desc.regions, ...fabricRegistered(desc)];
    const added = this.#call(() => this.#native.addPeer(desc.name, desc.virtAddr, desc.rails, fabricRegions, hostArg), { peer: desc.name });
    const id = added.id;
    logRefusedPaths(this.#log, this.name, desc.name, added);
    const previous = this.#peers.get(desc.name);
    if (previous) this.invalidateRemoteMetadata(previous);
    const regions = [
      ...desc.regions.map((r) => ({ id: r.id, length: r.length })),
      ...(desc.devices ?? []).map((d) => ({ id: d.id, length: d.length, kind: d.kind })),
    ];
    const digest = desc.host?.table?.nonce ?? new Uint8Array(16);
    const peer = new RemotePeer(this, id, desc.name, desc.provider, desc.rails.length, regions, added.path, added.fastPathRefused, added.mappedRegions, digest);
    this.#peers.set(desc.name, peer);
    this.#devices.peerLoaded(desc, hostArg !== undefined && this.#fastPath);
    const endpoints = endpointsOf(this.provider, desc.rails);
    if (endpoints.length > 0) this.#endpoints.set(desc.name, endpoints.join(', '));
    return peer;
  }

  /** Forgets a peer; later transfers to it fail with KVF_ERR_UNKNOWN_PEER until its metadata is loaded again. */
  invalidateRemoteMetadata(peer: RemotePeer | string): void {
    this.#assertOpen();
    const p = this.#peer(peer);
    this.#call(() => this.#native.removePeer(p.id));
    this.#peers.delete(p.name);
    this.#endpoints.delete(p.name);
    this.#devices.peerForgotten(p.name);
    p.markInvalid();
  }

  peer(name: string): RemotePeer | undefined {
    return this.#peers.get(name);
  }

  // ---- transfers ----------------------------------------------------------------------------------

  /** One-sided WRITE of local ranges into the peer's regions. */
  write(peer: RemotePeer | string, descriptors: readonly TransferDescriptor[], options: TransferOptions = {}): Promise<TransferReport> {
    return this.transfer('WRITE', peer, descriptors, options);
  }

  /** One-sided READ of the peer's ranges into local regions. */
  read(peer: RemotePeer | string, descriptors: readonly TransferDescriptor[], options: TransferOptions = {}): Promise<TransferReport> {
    return this.transfer('READ', peer, descriptors, options);
  }

  transfer(op: TransferOp, peer: RemotePeer | string, descriptors: readonly TransferDescriptor[], options: TransferOptions = {}): Promise<TransferReport> {
    try {
      this.#assertOpen();
      if (op !== 'READ' && op !== 'WRITE') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `op must be READ or WRITE, not ${String(op)}`);
      checkOptionKeys(options, TRANSFER_OPTION_KEYS, op === 'READ' ? 'read' : 'write');
      const p = this.#peer(peer);
      const note = options.notification === undefined ? undefined : notificationBytes(options.notification);
      if (this.#devices.involves(p, descriptors)) return this.#devices.transfer(op, p, descriptors, options.timeoutMs, note);
      return this.#postHost(op, p, descriptors, options.timeoutMs, note);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #postHost(
    op: TransferOp,
    p: RemotePeer,
    descriptors: readonly TransferDescriptor[],
    timeoutMs: number | undefined,
    note?: Uint8Array,
  ): Promise<TransferReport> {
    const packed = packDescriptors(descriptors, this.#regions);
    const id = this.#call(() => this.#native.post(op === 'WRITE' ? 0 : 1, p.id, packed, note), { peer: p.name });
    return this.#track(id, op, p.name, descriptors.length, note !== undefined, timeoutMs);
  }

  /** Validates descriptors once for repeated posting with post(); release() it when done (close() frees all). */
  prepare(peer: RemotePeer | string, descriptors: readonly TransferDescriptor[]): PreparedTransfer {
    this.#assertOpen();
    const p = this.#peer(peer);
    if (this.#devices.involves(p, descriptors)) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'prepared lists carry host memory only; move device regions with read() and write()');
    }
    const packed = packDescriptors(descriptors, this.#regions);
    const id = this.#call(() => this.#native.prepare(p.id, packed), { peer: p.name });
    let bytes = 0;
    for (const d of descriptors) bytes += d.length;
    return new PreparedTransfer(this, id, p, descriptors.length, bytes);
  }

  /** Posts a prepared list as one transfer: READ or WRITE, all its descriptors or `options.indices`. */
  post(op: TransferOp, prepared: PreparedTransfer, options: PostOptions = {}): Promise<TransferReport> {
    try {
      this.#assertOpen();
      if (op !== 'READ' && op !== 'WRITE') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `op must be READ or WRITE, not ${String(op)}`);
      if (!(prepared instanceof PreparedTransfer) || prepared.peer.agent !== this) {
        throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'post() needs a PreparedTransfer of this agent');
      }
      prepared.assertUsable();
      checkOptionKeys(options, POST_OPTION_KEYS, 'post');
      const p = this.#peer(prepared.peer);
      const indices = options.indices === undefined ? undefined : options.indices instanceof Uint32Array ? options.indices : Uint32Array.from(options.indices);
      const note = options.notification === undefined ? undefined : notificationBytes(options.notification);
      const id = this.#call(() => this.#native.postPrepared(op === 'WRITE' ? 0 : 1, prepared.id, indices ?? null, note), { peer: p.name });
      return this.#track(id, op, p.name, indices?.length ?? prepared.count, note !== undefined, options.timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** @internal called by PreparedTransfer.release(). */
  releasePrepared(list: PreparedTransfer): void {
    if (!this.closed) this.#call(() => this.#native.releasePrepared(list.id));
  }

  /**
   * Connects every rail to the peer now (a 1-byte READ per rail, and per express lane), so the first real transfer
   * pays no connection set-up. The report's `rails` and `ops` say which rails and lanes that READ went over.
   */
  async warmup(peer: RemotePeer | string): Promise<TransferReport> {
    this.#assertOpen();
    const p = this.#peer(peer);
    const id = this.#call(() => this.#native.warmup(p.id), { peer: p.name });
    return this.#track(id, 'READ', p.name, this.rails, false, undefined);
  }

  // ---- notifications ------------------------------------------------------------------------------

  /** Sends bytes to the peer; resolves when the provider reports the send complete. */
  async sendNotification(peer: RemotePeer | string, data: Uint8Array | string): Promise<void> {
    return this.#notifyPeer(peer, notificationBytes(data), undefined);
  }

  async #notifyPeer(peer: RemotePeer | string, bytes: Uint8Array, timeoutMs: number | undefined): Promise<void> {
    this.#assertOpen();
    const p = this.#peer(peer);
    const id = this.#call(() => this.#native.notify(p.id, bytes), { peer: p.name });
    await this.#track(id, 'NOTIFY', p.name, 0, true, timeoutMs);
  }

  /** Notifications from peers, in arrival order, as an async iterator; ends when the agent closes. */
  notifications(): AsyncIterableIterator<Notification> {
    return this.#notifications.iterate();
  }

  // ---- lifecycle ----------------------------------------------------------------------------------

  /**
   * Idempotent. Refuses new work at once, lets transfers in flight finish (up to closeTimeoutMs, after which
   * they reject with KVF_ERR_CLOSED), closes every endpoint and releases registered memory.
   */
  close(): Promise<void> {
    if (this.#whenClosed) return this.#whenClosed;
    if (this.#state === 'open') this.#state = 'closing';
    this.#whenClosed = new Promise<void>((resolve) => {
      this.#resolveClosed = resolve;
    });
    this.#hold.ref(); // the close event must be able to arrive
    this.#native.close(this.#closeTimeoutMs);
    return this.#whenClosed;
  }

  // The one entry for completions (native/binding/completion_channel.h): the addon calls it with each batch, and
  // a post call's records are read through it too. Successful transfers come first, as records (a 'closed'
  // event, always the batch's last, must find them settled), then the other events. `own`: the transfer that
  // post call just made, never pending: its report is returned rather than settled. It must not throw: an error
  // from a user's listener is re-thrown on the next tick, where Node reports it like any other uncaught exception.
  #deliver(events: NativeEvent[] | undefined, r: Float64Array, own?: Posted & { id: number }): TransferReport | undefined {
    let report: TransferReport | undefined;
    const end = RECORD_HEADER_SIZE + r[RECORD_HEADER.count]! * RECORD_STRIDE;
    for (let i = RECORD_HEADER_SIZE; i < end; i += RECORD_STRIDE) {
      if (own !== undefined && r[i + F.id] === own.id) {
        report = this.#report(r, i, own);
        continue;
      }
      const p = this.#settle(r[i + F.id]!);
      try {
        p?.resolve(this.#report(r, i, p));
      } catch (err) {
        rethrowLater(err);
      }
    }
    for (const ev of events ?? []) {
      try {
        if (ev.type === 'failed') this.#reject(ev.id, ev.error);
        else if (ev.type === 'notification') this.#notify({ from: ev.from, data: ev.data });
        else this.#finishClose();
      } catch (err) {
        rethrowLater(err);
      }
    }
    return report;
  }

  #report(r: Float64Array, i: number, t: Posted): TransferReport {
    return readReport(r, i, t, this.backend, this.provider);
  }

  #reject(id: number, error: NativeErrorObject): void {
    const p = this.#settle(id);
    p?.reject(fromNative(error, { peer: p.peer, provider: this.provider }));
  }

  /** Takes the transfer out of the pending set (its timer cleared, its ref dropped); undefined if it timed out. */
  #settle(id: number): Pending | undefined {
    const p = this.#pending.get(id);
    if (!p) return undefined;
    this.#pending.delete(id);
    if (p.timer) clearTimeout(p.timer);
    if (p.held) this.#hold.unref();
    return p;
  }

  #notify(n: Notification): void {
    if (this.#devices.onNotification(n.from, n.data)) return;
    this.#notifications.push(n);
    this.emit('notification', n);
  }

  #finishClose(): void {
    this.#state = 'closed';
    for (const region of this.#regions.values()) region.markDeregistered();
    this.#regions.clear();
    this.#grants.endAll();
    this.#devices.close();
    for (const peer of this.#peers.values()) peer.markInvalid();
    this.#peers.clear();
    this.#endpoints.clear();
    // The addon fails every transfer it abandoned before this event; anything left never reached it.
    for (const [id, p] of this.#pending) {
      this.#pending.delete(id);
      if (p.timer) clearTimeout(p.timer);
      p.reject(new KvfError('KVF_ERR_CLOSED', 'agent closed with the transfer in flight', { peer: p.peer }));
    }
    this.#notifications.end();
    this.#hold.reset();
    this.#native.closeSync();
    this.#log?.debug({ agent: this.name }, 'kvfabric agent closed');
    this.#resolveClosed?.();
  }

  // Registers a posted transfer. What completed inside the post call is in the records already: this
  // transfer, settled here without ever being pending (it needs no ref, no map entry), and express ops of
  // earlier ones. Failures and notifications the call produced wait for a reap(), made at once.
  #track(id: number, op: Pending['op'], peer: string, descriptors: number, notified: boolean, timeoutMs: number | undefined): Promise<TransferReport> {
    const done = this.#deliver(undefined, this.#records, { id, op, peer, descriptors, notified });
    if (done !== undefined) {
      if (this.#poller === undefined || this.#poller.maySettleNow()) return Promise.resolve(done);
      return new Promise((resolve) => setImmediate(resolve, done));
    }
    const settled = new Promise<TransferReport>((resolve, reject) => {
      const p: Pending = { resolve, reject, op, peer, descriptors, notified, held: false };
      if (timeoutMs !== undefined) armTimeout(p, timeoutMs, reject, () => this.#endpoints.get(peer));
      this.#pending.set(id, p);
    });
    if (this.#records[RECORD_HEADER.eventsWaiting] !== 0) this.#native.reap();
    const p = this.#pending.get(id);
    if (p) {
      p.held = true;
      this.#hold.ref();
      this.#poller?.afterPost();
    }
    return settled;
  }

  #hostRegion(local: MemoryRegion | number): MemoryRegion {
    const r = this.#regions.get(typeof local === 'number' ? local : ((local as MemoryRegion | undefined)?.id ?? -1));
    if (!r || (typeof local !== 'number' && r !== local)) {
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `descriptor names a region that is not registered with agent ${this.name}`);
    }
    return r;
  }

  #peer(peer: RemotePeer | string): RemotePeer {
    const p = typeof peer === 'string' ? this.#peers.get(peer) : peer;
    if (!(p instanceof RemotePeer) || p.agent !== this || !p.valid || this.#peers.get(p.name) !== p) {
      const name = typeof peer === 'string' ? peer : (peer as RemotePeer | undefined)?.name;
      throw new KvfError('KVF_ERR_UNKNOWN_PEER', `peer '${String(name)}' is not loaded in agent ${this.name}`, { peer: String(name) });
    }
    return p;
  }

  #assertOpen(): void {
    if (this.closed) throw new KvfError('KVF_ERR_CLOSED', `agent ${this.name} is closed`);
  }

  #call<T>(fn: () => T, extra: { peer?: string } = {}): T {
    try {
      return fn();
    } catch (err) {
      throw fromNative(err, { ...extra, provider: this.provider });
    }
  }
}

/** A peer's device regions its provider registered (FI_HMEM), as regions the addon moves by fabric alone. */
function fabricRegistered(desc: AgentDescription): NativeRegion[] {
  return (desc.devices ?? []).flatMap((d) => (d.fabric ? [{ id: d.fabric.id, length: d.length, base: d.fabric.base, keys: d.fabric.keys, device: true }] : []));
}

function rethrowLater(err: unknown): void {
  process.nextTick(() => {
    throw err;
  });
}
