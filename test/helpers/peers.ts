// Parent side of the multi-process tests: forks test/fixtures/peer.ts (a real child process with its own
// Agent) and drives it with request/reply messages over the IPC channel; it can also freeze a child
// (SIGSTOP) and read its memory through /proc. Children are tracked so that closePeers() (from `after`)
// and a last-resort 'exit' hook never leave one running.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import type { StagingOptions, TransferReport } from '../../src/index.js';
import { prng } from './random.js';

export { prng };

// ---- wire protocol (shared with the fixture) ------------------------------------------------------

/** [offset, length] within a region. */
export type Range = readonly [number, number];

/** A descriptor as sent to a peer: `local` names one of that peer's regions by key, `remote` is the id the
 * other peer advertised. */
export interface WireDescriptor {
  local: string;
  localOffset: number;
  remote: number;
  remoteOffset: number;
  length: number;
}

export interface TransferSpec {
  op: 'READ' | 'WRITE';
  /** Name of the peer agent (as loaded with load()). */
  peer: string;
  descs: WireDescriptor[];
  /** UTF-8 notification text delivered after the data. */
  notification?: string;
  timeoutMs?: number;
}

export interface CreatedAgent {
  name: string;
  provider: string;
  fabric: string;
  rails: number;
}

export interface LoadedPeer {
  name: string;
  provider: string;
  rails: number;
  regions: { id: number; length: number }[];
  /** What carries transfers to it: the provider ('fabric') or the same-host fast path ('cma'). */
  path?: string;
  fastPathRefused?: string;
}

/** One transfer's outcome, failures included (transferSettled). */
export type Settled = { ok: true; report: TransferReport } | { ok: false; code?: string; message: string };

/** Outcome of one data check made by the target inside its 'notification' listener. */
export interface CheckResult {
  tag: string;
  ok: boolean;
  expected: string;
  actual: string;
}

/** One notification as the target saw it, in arrival order. */
export interface ReceivedNotification {
  /** Arrival index at the target (0-based, per agent). */
  seq: number;
  from: string;
  dataBase64: string;
  /** Present when the payload was a check request (CHECK_PREFIX + JSON of CheckRequest). */
  check?: CheckResult;
}

/** Notification payloads that start with this ask the target to hash `ranges` of `region` the moment the
 * notification is delivered, and compare with `sha256`. */
export const CHECK_PREFIX = 'KVFCHECK:';

export interface CheckRequest {
  tag: string;
  /** The target's region id (as advertised in its metadata). */
  region: number;
  ranges: Range[];
  sha256: string;
}

export type Request =
  | { cmd: 'create'; name: string; provider: string; fastPath?: boolean; address?: string; staging?: StagingOptions; hmem?: boolean }
  | { cmd: 'alloc'; region: string; length: number; fill: 'random' | 'zero'; shared?: boolean; remoteAccess?: boolean; device?: string }
  | { cmd: 'free'; region: string }
  | { cmd: 'fill'; region: string; ranges: Range[] }
  | { cmd: 'hash'; region: string; ranges: Range[] }
  | { cmd: 'hashEach'; region: string; ranges: Range[] }
  | { cmd: 'metadata' }
  | { cmd: 'load'; metadata: string }
  | { cmd: 'transfer'; spec: TransferSpec }
  | { cmd: 'transferMany'; specs: TransferSpec[] }
  | { cmd: 'transferSettled'; specs: TransferSpec[] }
  | { cmd: 'notify'; peer: string; dataBase64: string }
  | { cmd: 'takeNotifications'; count: number; timeoutMs: number }
  | { cmd: 'grant'; region: string; offset: number; length: number; access: 'read' | 'write' }
  | { cmd: 'revoke'; grant: number }
  | { cmd: 'addGrant'; peer: string; bytes: string }
  | { cmd: 'removeGrant'; peer: string; grant: number }
  | { cmd: 'close' };

export interface Replies {
  create: CreatedAgent;
  alloc: { id: number; length: number };
  free: null;
  fill: null;
  hash: string;
  hashEach: string[];
  metadata: string;
  load: LoadedPeer;
  transfer: TransferReport;
  transferMany: TransferReport[];
  transferSettled: Settled[];
  notify: null;
  /** `events`: what the 'notification' listener saw; `iterated`: what agent.notifications() yielded. */
  takeNotifications: { events: ReceivedNotification[]; iterated: { from: string; dataBase64: string }[] };
  /** `bytes`: the grant's bytes, base64. */
  grant: { id: number; bytes: string };
  revoke: null;
  /** The region id to use as `remote`. */
  addGrant: number;
  removeGrant: null;
  close: null;
}

export type Envelope = { id: number } & Request;
export type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: WireError };
export interface WireError {
  message: string;
  code?: string;
  stack?: string;
}

// ---- parent side ------------------------------------------------------------------------------------

// A machine without npm (the GPU machine, scripts/gpu-pack.sh) runs the fixture bundled: KVF_PEER_FIXTURE names it.
const BUNDLED_FIXTURE = process.env.KVF_PEER_FIXTURE;
const FIXTURE = BUNDLED_FIXTURE ?? fileURLToPath(new URL('../fixtures/peer.ts', import.meta.url));
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export class PeerError extends Error {
  constructor(
    readonly peer: string,
    readonly cmd: string,
    readonly remote: WireError,
  ) {
    super(`peer ${peer}: ${cmd} failed: ${remote.code ? remote.code + ': ' : ''}${remote.message}`);
    this.name = 'PeerError';
  }
}

/** Asserts that `p` fails in the peer with one of `codes`. */
export async function failsWith(p: Promise<unknown>, codes: string[], label: string): Promise<PeerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  assert.ok(err instanceof PeerError, `${label}: accepted`);
  assert.ok(codes.includes(err.remote.code ?? ''), `${label}: expected ${codes.join(' or ')}, got ${err.remote.code}: ${err.message}`);
  return err;
}

export class PeerProcess {
  readonly label: string;
  /** Filled in by create(). */
  agent?: CreatedAgent;
  /** Region ids by key, filled in by alloc(). */
  readonly regions = new Map<string, number>();

  #child: ChildProcess;
  #next = 1;
  #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void; cmd: string }>();
  #exited: Promise<void>;
  #exitInfo?: string;
  #ready: Promise<void>;

  private constructor(label: string, prefix: string[]) {
    this.label = label;
    // A prefix (a simulated host's `ip netns exec …`, helpers/hosts.ts) runs node through it; the IPC channel's
    // descriptor is inherited through the exec chain.
    const [execPath, ...pre] = [...prefix, process.execPath];
    this.#child = fork(FIXTURE, [label], {
      execPath: execPath!,
      execArgv: BUNDLED_FIXTURE ? pre : [...pre, '--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      env: { ...process.env, KVF_LOG_LEVEL: process.env.KVF_LOG_LEVEL ?? 'warn' },
    });
    live.add(this.#child);
    let readyResolve!: () => void;
    let readyReject!: (e: Error) => void;
    this.#ready = new Promise((res, rej) => {
      readyResolve = res;
      readyReject = rej;
    });
    this.#ready.catch(() => {});
    this.#exited = new Promise((resolve) => {
      this.#child.once('exit', (code, signal) => {
        live.delete(this.#child);
        this.#exitInfo = signal ? `killed by ${signal}` : `exited with code ${code}`;
        const err = new Error(`peer ${label} ${this.#exitInfo}`);
        readyReject(err);
        for (const p of this.#pending.values()) p.reject(new Error(`peer ${label} ${this.#exitInfo} during ${p.cmd}`));
        this.#pending.clear();
        resolve();
      });
    });
    this.#child.on('error', (err) => readyReject(err));
    this.#child.on('message', (msg: Reply | { ready: true }) => {
      if ('ready' in msg) {
        readyResolve();
        return;
      }
      const p = this.#pending.get(msg.id);
      if (!p) return;
      this.#pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result);
      else p.reject(new PeerError(label, p.cmd, msg.error));
    });
  }

  /** Forks the fixture (through `prefix`, if given) and waits until it listens for commands. */
  static async spawn(label: string, prefix: string[] = []): Promise<PeerProcess> {
    const p = new PeerProcess(label, prefix);
    await p.#ready;
    return p;
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  get name(): string {
    if (!this.agent) throw new Error(`peer ${this.label} has no agent yet`);
    return this.agent.name;
  }

  request<C extends Request['cmd']>(req: Extract<Request, { cmd: C }>, timeoutMs = 60_000): Promise<Replies[C]> {
    if (this.#exitInfo) return Promise.reject(new Error(`peer ${this.label} ${this.#exitInfo}`));
    const id = this.#next++;
    return new Promise<Replies[C]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new Error(`peer ${this.label}: ${req.cmd} got no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const fail = (e: Error) => {
        clearTimeout(timer);
        reject(e);
      };
      this.#pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as Replies[C]);
        },
        reject: fail,
        cmd: req.cmd,
      });
      this.#child.send({ id, ...req } satisfies Envelope, (err) => {
        if (err && this.#pending.delete(id)) fail(err);
      });
    });
  }

  // ---- conveniences -------------------------------------------------------------------------------

  async create(
    name: string,
    provider: string,
    options: { fastPath?: boolean; address?: string; staging?: StagingOptions; hmem?: boolean } = {},
  ): Promise<CreatedAgent> {
    this.agent = await this.request({ cmd: 'create', name, provider, ...options });
    return this.agent;
  }

  /** Allocates and registers `length` bytes filled with crypto-random bytes or zeros; returns the region id. */
  async alloc(region: string, length: number, fill: 'random' | 'zero', shared?: boolean, remoteAccess?: boolean): Promise<number> {
    const r = await this.request({
      cmd: 'alloc',
      region,
      length,
      fill,
      ...(shared !== undefined ? { shared } : {}),
      ...(remoteAccess !== undefined ? { remoteAccess } : {}),
    });
    this.regions.set(region, r.id);
    return r.id;
  }

  /** A device region ('cuda:N', or 'stand-in': host memory the agent treats as a device's), filled like alloc(). */
  async allocDevice(region: string, length: number, fill: 'random' | 'zero', device: string): Promise<number> {
    const r = await this.request({ cmd: 'alloc', region, length, fill, device });
    this.regions.set(region, r.id);
    return r.id;
  }

  async free(region: string): Promise<void> {
    await this.request({ cmd: 'free', region });
    this.regions.delete(region);
  }

  regionId(region: string): number {
    const id = this.regions.get(region);
    if (id === undefined) throw new Error(`peer ${this.label} has no region '${region}'`);
    return id;
  }

  /** Overwrites the ranges with fresh random bytes. */
  fill(region: string, ranges: Range[]): Promise<null> {
    return this.request({ cmd: 'fill', region, ranges });
  }

  /** sha256 (hex) of the concatenation of the ranges, computed by the process that owns the memory. */
  hash(region: string, ranges: Range[]): Promise<string> {
    return this.request({ cmd: 'hash', region, ranges });
  }

  hashEach(region: string, ranges: Range[]): Promise<string[]> {
    return this.request({ cmd: 'hashEach', region, ranges });
  }

  async metadata(): Promise<string> {
    return this.request({ cmd: 'metadata' });
  }

  load(metadataBase64: string): Promise<LoadedPeer> {
    return this.request({ cmd: 'load', metadata: metadataBase64 });
  }

  transfer(spec: TransferSpec, timeoutMs?: number): Promise<TransferReport> {
    return this.request({ cmd: 'transfer', spec }, timeoutMs);
  }

  /** Posts every transfer in the same tick in the child and reports each one's outcome, failures included. */
  transferSettled(specs: TransferSpec[], timeoutMs?: number): Promise<Settled[]> {
    return this.request({ cmd: 'transferSettled', specs }, timeoutMs);
  }

  /** Posts every transfer in the same tick in the child and awaits them together. */
  transferMany(specs: TransferSpec[], timeoutMs?: number): Promise<TransferReport[]> {
    return this.request({ cmd: 'transferMany', specs }, timeoutMs);
  }

  /** Grants `peer`-agnostic access to a range of one of this child's regions; returns its id and bytes (base64). */
  grant(region: string, offset: number, length: number, access: 'read' | 'write'): Promise<{ id: number; bytes: string }> {
    return this.request({ cmd: 'grant', region, offset, length, access });
  }

  async revoke(grant: number): Promise<void> {
    await this.request({ cmd: 'revoke', grant });
  }

  /** Adds grant bytes (base64) of the loaded peer `peer`; returns the region id to use as `remote`. */
  addGrant(peer: string, bytes: string): Promise<number> {
    return this.request({ cmd: 'addGrant', peer, bytes });
  }

  async removeGrant(peer: string, grant: number): Promise<void> {
    await this.request({ cmd: 'removeGrant', peer, grant });
  }

  async notify(peer: string, data: Uint8Array | string): Promise<void> {
    await this.request({ cmd: 'notify', peer, dataBase64: Buffer.from(data).toString('base64') });
  }

  /** Waits until `count` notifications have arrived (since the last take) and returns them. */
  takeNotifications(count: number, timeoutMs = 30_000): Promise<Replies['takeNotifications']> {
    return this.request({ cmd: 'takeNotifications', count, timeoutMs }, timeoutMs + 10_000);
  }

  /** Graceful close of the agent, then the child exits; SIGKILL if that does not happen in time. */
  async close(timeoutMs = 10_000): Promise<void> {
    if (!this.#exitInfo) {
      try {
        await this.request({ cmd: 'close' }, timeoutMs);
        if (this.#child.connected) this.#child.disconnect(); // the child exits once its channel closes
      } catch {
        this.#child.kill('SIGKILL'); // hung, stopped or broken: do not wait for it
      }
    }
    const killer = setTimeout(() => this.#child.kill('SIGKILL'), 5_000);
    await this.#exited;
    clearTimeout(killer);
  }

  kill(): void {
    this.#child.kill('SIGKILL');
  }

  /**
   * Runs `fn` while the child is stopped (SIGSTOP): none of its threads, the rails' progress threads
   * included, runs until SIGCONT, which is sent however `fn` ends.
   */
  async frozen<T>(fn: () => Promise<T>): Promise<T> {
    const pid = this.#child.pid;
    if (pid === undefined || this.#exitInfo) throw new Error(`peer ${this.label} is not running`);
    this.#child.kill('SIGSTOP');
    try {
      await waitForState(pid, 'T', 5_000);
      return await fn();
    } finally {
      this.#child.kill('SIGCONT');
    }
  }

  get exitInfo(): string | undefined {
    return this.#exitInfo;
  }
}

/** Spawns one child per name, each with an Agent on `provider`. Children already spawned are returned
 * through `into` so that `after` can close them even when a later spawn fails. */
export async function spawnPeers(names: string[], provider: string, into: PeerProcess[]): Promise<PeerProcess[]> {
  const peers = await Promise.all(
    names.map(async (n) => {
      const p = await PeerProcess.spawn(n);
      into.push(p);
      await p.create(n, provider);
      return p;
    }),
  );
  return peers;
}

/** Every peer loads every other peer's current metadata (call again after allocating new regions). */
/**
 * An owner and two readers of it, created with `provider`: one with the fast path off (the provider carries the
 * bytes, with the owner's table checked on this host), one with it on (cma or mapped). Names: `<tag>own-`,
 * `<tag>rd-`, `<tag>fp-` followed by the provider.
 */
export async function spawnOwnerAndReaders(
  tag: string,
  provider: string,
  into: PeerProcess[],
): Promise<{ owner: PeerProcess; reader: PeerProcess; fast: PeerProcess }> {
  const [owner] = await spawnPeers([`${tag}own-${provider}`], provider, into);
  const [reader, fast] = await Promise.all(
    [`${tag}rd-${provider}`, `${tag}fp-${provider}`].map(async (name, i) => {
      const p = await PeerProcess.spawn(name);
      into.push(p);
      await p.create(name, provider, { fastPath: i === 1 });
      return p;
    }),
  );
  return { owner: owner!, reader: reader!, fast: fast! };
}

export async function connectAll(peers: PeerProcess[]): Promise<Map<string, Map<string, LoadedPeer>>> {
  const blobs = await Promise.all(peers.map((p) => p.metadata()));
  const out = new Map<string, Map<string, LoadedPeer>>();
  await Promise.all(
    peers.map(async (p, i) => {
      const seen = new Map<string, LoadedPeer>();
      for (let j = 0; j < peers.length; j++) {
        if (j === i) continue;
        seen.set(peers[j]!.name, await p.load(blobs[j]!));
      }
      out.set(p.name, seen);
    }),
  );
  return out;
}

/** Closes every peer (in parallel); never throws, never leaves a child behind. */
export async function closePeers(peers: PeerProcess[]): Promise<void> {
  await Promise.all(peers.map((p) => p.close().catch(() => p.kill())));
  peers.length = 0;
}

/** Polls /proc/<pid>/stat until the process is in `state` (e.g. 'T' for stopped). */
export async function waitForState(pid: number, state: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (stat.slice(stat.lastIndexOf(')') + 2).startsWith(state)) return;
    if (Date.now() > deadline) throw new Error(`process ${pid} did not reach state ${state}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Reads another process's memory through /proc/<pid>/mem (same user; the process is best stopped). */
export function readProcessMemory(pid: number, address: bigint, length: number): Buffer {
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  try {
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, address + BigInt(done));
      if (n <= 0) throw new Error(`short read of /proc/${pid}/mem at 0x${(address + BigInt(done)).toString(16)}`);
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

// ---- small shared utilities -------------------------------------------------------------------------

export function randomInt(rng: () => number, lo: number, hi: number): number {
  return lo + Math.floor(rng() * (hi - lo + 1));
}

export function shuffle<T>(rng: () => number, items: T[]): T[] {
  const a = [...items];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** sha256 of `length` zero bytes, for checking that bytes around written ranges stayed untouched. */
export function zeroHash(length: number): string {
  const h = createHash('sha256');
  const chunk = Buffer.alloc(Math.min(length, 1 << 20));
  for (let left = length; left > 0; left -= chunk.length) h.update(left >= chunk.length ? chunk : chunk.subarray(0, left));
  return h.digest('hex');
}
