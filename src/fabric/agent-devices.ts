// An agent's device memory: its device regions, what it knows of its peers' ones, and transfers that touch
// device memory on either side, each descriptor on the path gpu-path.ts chooses (cuda-ipc on one host,
// staged elsewhere; host-only descriptors keep the host paths). The agent delegates here and stays a thin shape.
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { BouncePool } from './bounce-pool.js';
import type { Backend } from './config.js';
import { CudaIpcCache, copiesDone, copyIpc } from './cuda-ipc.js';
import type { TransferDescriptor } from './descriptors.js';
import { DEVICE_REGION_ID_BASE, DeviceRegion, type DeviceBacking } from './device-region.js';
import { DeviceBuffer, call, parseDevice, requireDevice } from './gpu.js';
import { gpuAddon } from './gpu-native.js';
import { choosePath, type PathName } from './gpu-path.js';
import type { Grant } from './grants.js';
import { MemoryRegion } from './memory.js';
import type { AgentDescription, DeviceRegionDescription, FabricRegistration } from './metadata.js';
import type { RemotePeer } from './peer.js';
import { MAX_STAGE_RANGES, STAGE, decodeStage, isStageMessage } from './stage-protocol.js';
import { StageServer } from './stage-server.js';
import { StagedRequester, type StagedPiece } from './staged-transfer.js';
import type { Staging } from './staging-options.js';
import type { TransferOp, TransferReport } from './transfer-report.js';

/** What the agent lends its device side. */
export interface DevicesHost {
  readonly name: string;
  readonly backend: Backend;
  readonly provider: string;
  readonly log: Logger | undefined;
  /** Registered host memory for bounce chunks, kept out of metadata. */
  allocateHost(length: number): MemoryRegion;
  grant(region: MemoryRegion, options: { offset: number; length: number; access: 'read' | 'write' }): Grant;
  /** A transfer of host ranges only (the agent's own paths). */
  hostTransfer(
    op: TransferOp,
    peer: RemotePeer,
    descriptors: TransferDescriptor[],
    timeoutMs: number | undefined,
    notification?: Uint8Array,
  ): Promise<TransferReport>;
  /** Sends a notification, failing with KVF_ERR_TIMEOUT after `timeoutMs` (a dead peer is never reached). */
  sendNotification(peer: RemotePeer | string, data: Uint8Array, timeoutMs?: number): Promise<void>;
  /** The agent's host region for a descriptor's `local` (KVF_ERR_UNKNOWN_REGION if none). */
  hostRegion(local: MemoryRegion | number): MemoryRegion;
  /** Registers device memory (or stand-in bytes) with the rails through FI_HMEM; absent when the agent has no FI_HMEM. */
  registerWithFabric?: (memory: bigint | Uint8Array, length: number, cudaDevice: number, remoteAccess: boolean) => FabricRegistration;
  deregisterFromFabric(id: number): void;
}

interface PeerDevices {
  regions: Map<number, DeviceRegionDescription>;
  /** The peer runs on this host and the same-host paths are allowed. */
  onHost: boolean;
  /** The most one staging request of the peer's device regions may move. */
  chunkBytes: number;
}

/** A descriptor with both sides resolved. */
interface Resolved {
  local: MemoryRegion | DeviceRegion;
  localOffset: number;
  /** The peer's host region id, or its device region. */
  remote: number | DeviceRegionDescription;
  remoteOffset: number;
  length: number;
  path: PathName | 'host';
  reason: string;
}

export class AgentDevices {
  #regions = new Map<number, DeviceRegion>();
  #nextId = DEVICE_REGION_ID_BASE;
  #peers = new Map<string, PeerDevices>();
  #ipc = new CudaIpcCache();
  #requestPool: BouncePool | undefined;
  #servePool: BouncePool | undefined;
  #inUse = new Map<DeviceRegion, number>();
  #server: StageServer;
  #requester: StagedRequester;

  constructor(
    private readonly host: DevicesHost,
    private readonly staging: Staging,
  ) {
    this.#server = new StageServer(
      {
        name: host.name,
        log: host.log,
        deviceRegion: (id) => this.#regions.get(id),
        servePool: () => (this.#servePool ??= this.#pool(staging.serveChunks)),
        grantChunk: (pool, chunk, length, access) => host.grant(pool.region, { offset: chunk.offset, length, access }),
        send: (peer, data) => host.sendNotification(peer, data, staging.leaseMs),
      },
      { leaseMs: staging.leaseMs, perPeer: staging.perPeer, quarantineMs: staging.quarantineMs },
    );
    this.#requester = new StagedRequester(
      {
        name: host.name,
        requestPool: () => (this.#requestPool ??= this.#pool(2 * staging.window)),
        fabric: (op, peer, ds, timeoutMs, notification) => host.hostTransfer(op, peer, ds, timeoutMs, notification),
        send: (peer, data, timeoutMs) => host.sendNotification(peer, data, timeoutMs),
      },
      staging.leaseMs,
    );
  }

  /** agent.allocate(length, { device }): 'cuda:N' allocates device memory, 'stand-in' host memory that acts as such. */
  allocate(length: number, device: string, remoteAccess: boolean): DeviceRegion {
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new KvfError(length === 0 ? 'KVF_ERR_ZERO_LENGTH' : 'KVF_ERR_INVALID_ARGUMENT', 'length must be a positive integer');
    }
    if (device === 'stand-in') return this.#add(length, { kind: 'stand-in', bytes: new Uint8Array(length) }, remoteAccess);
    const index = parseDevice(device);
    requireDevice(index);
    const owned = DeviceBuffer.allocate(device, length);
    return this.#add(length, { kind: 'cuda', device: index, ptr: owned.ptr, owned }, remoteAccess);
  }

  /** agent.registerMemory({ ptr, length, device }): device memory someone else owns, checked with the driver. */
  register(ptr: bigint, length: number, device: string, remoteAccess: boolean): DeviceRegion {
    const index = parseDevice(device);
    requireDevice(index);
    if (typeof ptr !== 'bigint') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'registerMemory: ptr must be a bigint device address');
    if (!Number.isSafeInteger(length) || length <= 0)
      throw new KvfError(length === 0 ? 'KVF_ERR_ZERO_LENGTH' : 'KVF_ERR_INVALID_ARGUMENT', 'length must be a positive integer');
    const range = call(() => gpuAddon.cudaCheckRange(ptr, length));
    if (range.device !== index) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `the pointer is memory of cuda:${range.device}, not ${device}`);
    return this.#add(length, { kind: 'cuda', device: index, ptr }, remoteAccess);
  }

  deregister(region: DeviceRegion): void {
    if (this.#regions.get(region.id) !== region)
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `device region ${region.id} does not belong to agent ${this.host.name}`);
    if (this.#inUse.has(region) || this.#server.busy(region)) throw new KvfError('KVF_ERR_BUSY', `device region ${region.id} is in use by a transfer`);
    if (region.fabric) this.host.deregisterFromFabric(region.fabric.id);
    this.#regions.delete(region.id);
  }

  /** What getLocalMetadata lists: the device regions peers may reach, and the most one staging request moves. */
  describe(): { devices: DeviceRegionDescription[]; stagingChunkBytes: number } {
    const devices = [...this.#regions.values()].filter((r) => r.remoteAccess).map((r) => r.describe());
    return { devices, stagingChunkBytes: devices.length > 0 ? this.staging.chunkBytes : 0 };
  }

  peerLoaded(desc: AgentDescription, onHost: boolean): void {
    this.#ipc.forget(desc.name);
    const regions = new Map((desc.devices ?? []).map((d) => [d.id, d]));
    this.#peers.set(desc.name, { regions, onHost, chunkBytes: desc.stagingChunkBytes ?? 0 });
  }

  peerForgotten(name: string): void {
    this.#ipc.forget(name);
    this.#peers.delete(name);
  }

  /** Whether a transfer touches device memory on either side. */
  involves(peer: RemotePeer, descriptors: readonly TransferDescriptor[]): boolean {
    const remote = this.#peers.get(peer.name)?.regions;
    if (!Array.isArray(descriptors)) return false; // the host path refuses it with its message
    for (const d of descriptors) {
      if (d?.local instanceof DeviceRegion || (typeof d?.local === 'number' && this.#regions.has(d.local))) return true;
      const id = typeof d?.remote === 'object' && d.remote !== null ? d.remote.id : d?.remote;
      if (remote?.has(id as number)) return true;
    }
    return false;
  }

  /** A staging message is the agent's own business: true when `data` was one (consumed here). */
  onNotification(from: string, data: Uint8Array): boolean {
    if (!isStageMessage(data)) return false;
    const m = decodeStage(data);
    if (!m) this.host.log?.debug({ agent: this.host.name, peer: from }, 'malformed staging message dropped');
    else if (m.type === STAGE.granted || m.type === STAGE.done || m.type === STAGE.error) this.#requester.answer(from, m);
    else this.#server.handle(from, m);
    return true;
  }

  async transfer(
    op: TransferOp,
    peer: RemotePeer,
    descriptors: readonly TransferDescriptor[],
    timeoutMs: number | undefined,
    note?: Uint8Array,
  ): Promise<TransferReport> {
    const started = performance.now();
    const deadline = started + (timeoutMs ?? this.staging.replyTimeoutMs);
    const resolved = descriptors.map((d, i) => this.#resolve(peer, d, i));
    // Host ranges and device ranges the providers registered both go to the addon, in one fabric transfer.
    const host = resolved.filter((r) => r.path === 'host' || r.path === 'hmem');
    const ipc = resolved.filter((r) => r.path === 'cuda-ipc');
    const staged = resolved.filter((r) => r.path === 'staged');
    const locals = resolved.flatMap((r) => (r.local instanceof DeviceRegion ? [r.local] : []));
    for (const l of locals) this.#inUse.set(l, (this.#inUse.get(l) ?? 0) + 1);
    // Device copies queued on a stream: awaited before the regions are let go, whatever else failed.
    let queued: number[] = [];
    try {
      const hostRun = host.length === 0 ? undefined : this.host.hostTransfer(op, peer, host.map(toFabricDescriptor), timeoutMs);
      hostRun?.catch(() => {}); // awaited below, after the device parts
      for (const r of ipc) {
        const copy = copyIpc(op, r.local, r.localOffset, this.#ipcAddress(peer, r), r.length);
        if (copy !== undefined) queued.push(copy);
      }
      const remoteChunk = this.#peers.get(peer.name)?.chunkBytes || this.staging.chunkBytes;
      const pieces = intoPieces(staged, (r) => (typeof r.remote === 'object' ? Math.min(this.staging.chunkBytes, remoteChunk) : this.staging.chunkBytes));
      const totals = await this.#requester.run(op, peer, pieces, this.staging.window, deadline);
      await copiesDone(queued, deadline);
      queued = [];
      const hostReport = await hostRun;
      if (note !== undefined) await this.host.sendNotification(peer, note, remainingMs(deadline));
      const bytes = resolved.reduce((n, r) => n + r.length, 0);
      const durationMs = performance.now() - started;
      const rails = new Set([...totals.rails, ...(hostReport?.rails ?? [])]);
      return {
        op,
        peer: peer.name,
        backend: this.host.backend,
        provider: this.host.provider,
        rails: [...rails].sort((a, b) => a - b),
        descriptors: descriptors.length,
        bytes,
        durationMs,
        gbps: durationMs > 0 ? bytes / (durationMs * 1e6) : 0,
        notified: note !== undefined,
        ops: totals.ops + (hostReport?.ops ?? 0),
        postMs: 0,
        providerPostMs: totals.providerPostMs + (hostReport?.providerPostMs ?? 0),
        path: staged.length > 0 ? 'staged' : ipc.length > 0 ? 'cuda-ipc' : 'hmem',
        pathReason: [...new Set(resolved.map((r) => r.reason).filter((r) => r !== ''))].join('; '),
        express: false,
      };
    } finally {
      if (queued.length > 0) await copiesDone(queued, deadline).catch(() => {});
      for (const l of locals) {
        const n = this.#inUse.get(l)! - 1;
        if (n > 0) this.#inUse.set(l, n);
        else this.#inUse.delete(l);
      }
    }
  }

  close(): void {
    this.#requester.close();
    this.#server.close();
    this.#requestPool?.close();
    this.#servePool?.close();
    this.#ipc.close();
    for (const r of this.#regions.values()) r.markDeregistered();
    this.#regions.clear();
    this.#peers.clear();
  }

  #add(length: number, backing: DeviceBacking, remoteAccess: boolean): DeviceRegion {
    // With FI_HMEM the provider registers the memory too, and peers' NICs reach it directly (the hmem path).
    let fabric: FabricRegistration | undefined;
    try {
      const memory = backing.kind === 'cuda' ? backing.ptr : backing.bytes;
      fabric = this.host.registerWithFabric?.(memory, length, backing.kind === 'cuda' ? backing.device : 0, remoteAccess);
    } catch (err) {
      if (backing.kind === 'cuda') backing.owned?.free();
      throw err;
    }
    const region = new DeviceRegion({ deregisterDevice: (r) => this.deregister(r) }, this.#nextId++, length, backing, remoteAccess, fabric);
    this.#regions.set(region.id, region);
    return region;
  }

  #pool(chunks: number): BouncePool {
    return new BouncePool(this.host.allocateHost(chunks * this.staging.chunkBytes), this.staging.chunkBytes);
  }

  #resolve(peer: RemotePeer, d: TransferDescriptor, i: number): Resolved {
    const local = d.local instanceof DeviceRegion || typeof d.local !== 'number' ? d.local : (this.#regions.get(d.local) ?? d.local);
    if (local instanceof DeviceRegion && this.#regions.get(local.id) !== local) {
      throw new KvfError('KVF_ERR_UNKNOWN_REGION', `descriptor ${i}: device region ${local.id} is not registered with agent ${this.host.name}`);
    }
    const localRegion = local instanceof DeviceRegion ? local : this.host.hostRegion(local);
    const remoteId = typeof d.remote === 'object' && d.remote !== null ? d.remote.id : d.remote;
    const pd = this.#peers.get(peer.name);
    const remote = pd?.regions.get(remoteId) ?? remoteId;
    const { localOffset, remoteOffset, length } = d;
    for (const [what, v] of [
      ['localOffset', localOffset],
      ['remoteOffset', remoteOffset],
      ['length', length],
    ] as const) {
      if (!Number.isSafeInteger(v) || v < 0) throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `descriptor ${i}: ${what} must be an integer ≥ 0`);
    }
    if (length === 0) throw new KvfError('KVF_ERR_ZERO_LENGTH', `descriptor ${i}: length is 0`);
    if (localOffset + length > localRegion.length)
      throw new KvfError('KVF_ERR_OUT_OF_RANGE', `descriptor ${i}: the local range runs past region ${localRegion.id}`);
    if (typeof remote === 'object' && remoteOffset + length > remote.length) {
      throw new KvfError('KVF_ERR_OUT_OF_RANGE', `descriptor ${i}: the remote range runs past ${peer.name}'s device region ${remote.id}`);
    }
    const base = { local: localRegion, localOffset, remote, remoteOffset, length };
    const localKind = localRegion instanceof DeviceRegion ? 'cuda' : 'host';
    const remoteKind = typeof remote === 'object' ? 'cuda' : 'host';
    if (localKind === 'host' && remoteKind === 'host') return { ...base, path: 'host', reason: '' };
    const choice = choosePath({
      local: localKind,
      remote: remoteKind,
      sameHost: pd?.onHost ?? false,
      fastPath: true,
      remoteShared: false,
      remoteIpc: typeof remote === 'object' && remote.ipc !== undefined,
      localHmem: localRegion instanceof DeviceRegion && localRegion.fabric !== undefined,
      remoteHmem: typeof remote === 'object' && remote.fabric !== undefined,
      provider: this.host.provider,
    });
    const path = choice.path === 'cuda-ipc' || choice.path === 'hmem' ? choice.path : 'staged';
    return { ...base, path, reason: choice.reason };
  }

  #ipcAddress(peer: RemotePeer, r: Resolved): bigint {
    const region = r.remote as DeviceRegionDescription;
    const device = r.local instanceof DeviceRegion && r.local.kind === 'cuda' ? Number(r.local.device.slice(5)) : 0;
    return this.#ipc.address(peer.name, region, device) + BigInt(r.remoteOffset);
  }
}

/** A host or hmem descriptor as the addon takes it: device regions named by their fabric registration's id. */
function toFabricDescriptor(r: Resolved): TransferDescriptor {
  const local = r.local instanceof DeviceRegion ? r.local.fabric!.id : r.local;
  const remote = typeof r.remote === 'object' ? r.remote.fabric!.id : r.remote;
  return { local, localOffset: r.localOffset, remote, remoteOffset: r.remoteOffset, length: r.length };
}

/**
 * The staged descriptors as chunk-sized pieces: consecutive blocks between the same two regions share a piece
 * (one staging request, one grant, one fabric operation for all of them) while they fit; a block larger than a
 * chunk is cut into pieces of its own.
 */
function intoPieces(staged: readonly Resolved[], limitOf: (r: Resolved) => number): StagedPiece[] {
  const out: StagedPiece[] = [];
  let open: StagedPiece | undefined;
  for (const r of staged) {
    const limit = limitOf(r);
    const fits =
      open && open.local === r.local && sameRemote(open.remote, r.remote) && open.length + r.length <= limit && open.segments.length < MAX_STAGE_RANGES;
    if (fits) {
      open!.segments.push({ localOffset: r.localOffset, remoteOffset: r.remoteOffset, length: r.length });
      open!.length += r.length;
      continue;
    }
    for (let at = 0; at < r.length; at += limit) {
      const length = Math.min(limit, r.length - at);
      open = { local: r.local, remote: r.remote, segments: [{ localOffset: r.localOffset + at, remoteOffset: r.remoteOffset + at, length }], length };
      out.push(open);
    }
  }
  return out;
}

function sameRemote(a: StagedPiece['remote'], b: StagedPiece['remote']): boolean {
  return typeof a === 'number' ? a === b : typeof b === 'object' && a.id === b.id;
}

function remainingMs(deadline: number): number {
  return Math.max(1, Math.ceil(deadline - performance.now()));
}
