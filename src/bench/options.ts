// `kvfabric bench` options: parsed from commander's raw strings and checked up front, so that a typo fails
// in a second with a clear message instead of after minutes of measuring. Defaults are applied here (not
// in commander) so that the parser can tell "not given" from "given", which --latency needs.
import { KvfError } from '../common/errors.js';
import { MAX_BUSY_POLL_US } from '../fabric/config.js';
import type { TransferOp } from '../fabric/agent.js';

export interface BenchOptions {
  /** undefined: the Agent's default (FI_PROVIDER, else efa, else tcp). */
  provider: string | undefined;
  ops: TransferOp[];
  blockSizes: number[];
  /** Descriptors per transfer; undefined: chosen per block size (see defaultBatch). */
  batch: number | undefined;
  depth: number;
  rails: number | undefined;
  stripeThreshold: number | undefined;
  pool: number;
  /** Seconds per point; ignored when iters is set. */
  duration: number;
  iters: number | undefined;
  /** undefined: the Agent's default (KVF_FAST_PATH, else on). */
  fastPath: boolean | undefined;
  /** Both pools as shared memory (allocate({ shared })): same-host transfers then copy through a mapping. */
  sharedPool: boolean | 'auto';
  /** Both pools on reserved 2 MiB hugepages where there are enough (allocate({ hugepages: true })). */
  hugepages: boolean;
  /** Both agents' busy polling (µs); --latency makes it 1000 unless given, as the raw baseline spins too. */
  busyPollUs: number;
  /** The initiator's express-lane limit (bytes, 0 off); undefined: the agent's default. */
  expressMaxBytes: number | undefined;
  prepared: boolean;
  latency: boolean;
  json: string | undefined;
  chart: string | undefined;
  progress: boolean;
  /** tcp provider: the address the fabric endpoints bind (two hosts need a routable one). */
  fabricAddress: string | undefined;
  connect: HostPort | undefined;
  /** Where each side's pool lives: 'host', 'stand-in' or 'cuda:N'. */
  device: { initiator: string; target: string };
}

export interface TargetOptions {
  provider: string | undefined;
  rails: number | undefined;
  pool: number;
  fastPath: boolean | undefined;
  sharedPool: boolean | 'auto';
  hugepages: boolean;
  busyPollUs: number;
  fabricAddress: string | undefined;
  /** undefined: forked by an initiator, metadata over IPC. */
  listen: HostPort | undefined;
  /** 'host', 'stand-in' or 'cuda:N'. */
  device: string;
}

export interface HostPort {
  host: string;
  port: number;
}

/** What commander hands over: every value a string (or boolean for switches), undefined when not given. */
export interface RawBenchOptions {
  target?: boolean;
  listen?: string;
  connect?: string;
  provider?: string;
  op?: string;
  blockSizes?: string;
  batch?: string;
  depth?: string;
  rails?: string;
  stripeThreshold?: string;
  pool?: string;
  duration?: string;
  iters?: string;
  fastPath?: string;
  sharedPool?: string;
  hugepages?: boolean;
  busyPoll?: string;
  express?: string;
  prepared?: boolean;
  device?: string;
  latency?: boolean;
  json?: string;
  chart?: string;
  progress?: boolean;
  fabricAddress?: string;
}

export const DEFAULT_BLOCK_SIZES = [4, 16, 64, 256, 1024, 4096, 16384, 65536].map((k) => k * 1024);
export const DEFAULT_POOL = 256 * 2 ** 20;
export const DEFAULT_DEPTH = 4;
export const MAX_DEFAULT_BATCH = 32;
export const LATENCY_BUSY_POLL_US = 1000;

function bad(message: string): never {
  throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `bench: ${message}`);
}

/** '4K', '64k', '1M', '2G', '4096', '1.5M' → bytes (binary multiples). */
export function parseSize(text: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$/i.exec(text);
  if (!m) bad(`${what} '${text}' is not a size (a number with an optional K, M or G suffix)`);
  const unit = (m[2] ?? '').toLowerCase()[0];
  const mult = unit === 'k' ? 2 ** 10 : unit === 'm' ? 2 ** 20 : unit === 'g' ? 2 ** 30 : 1;
  const bytes = Math.round(Number(m[1]) * mult);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) bad(`${what} must be positive, not '${text}'`);
  return bytes;
}

/** 4096 → '4K', 1048576 → '1M', 1536 → '1536'. */
export function formatSize(bytes: number): string {
  for (const [unit, mult] of [
    ['G', 2 ** 30],
    ['M', 2 ** 20],
    ['K', 2 ** 10],
  ] as const) {
    if (bytes >= mult && bytes % mult === 0) return `${bytes / mult}${unit}`;
  }
  return String(bytes);
}

function positiveInt(text: string | undefined, what: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n <= 0) bad(`${what} must be a positive integer, not '${text}'`);
  return n;
}

export function parseHostPort(text: string, what: string): HostPort {
  // Bracketed IPv6 ([::1]:5000) or host:port; the last colon separates the port.
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) bad(`${what} must be host:port, not '${text}'`);
  return { host: m[1]!, port };
}

function fastPath(text: string | undefined): boolean | undefined {
  if (text === undefined) return undefined;
  const v = text.toLowerCase();
  if (['on', 'true', '1', 'yes'].includes(v)) return true;
  if (['off', 'false', '0', 'no'].includes(v)) return false;
  return bad(`--fast-path must be on or off, not '${text}'`);
}

function sharedPool(text: string | undefined): boolean | 'auto' {
  const v = text?.toLowerCase() ?? 'auto';
  if (v === 'auto') return 'auto';
  if (['on', 'true', '1', 'yes'].includes(v)) return true;
  if (['off', 'false', '0', 'no'].includes(v)) return false;
  return bad(`--shared-pool must be on, off or auto, not '${text}'`);
}

function busyPoll(text: string | undefined, latency: boolean): number {
  if (text === undefined) return latency ? LATENCY_BUSY_POLL_US : 0;
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || n > MAX_BUSY_POLL_US) bad(`--busy-poll must be 0..${MAX_BUSY_POLL_US} µs, not '${text}'`);
  return n;
}

function ops(text: string | undefined, latency: boolean): TransferOp[] {
  if (text === undefined) return latency ? ['READ'] : ['WRITE', 'READ'];
  const out: TransferOp[] = [];
  for (const part of text.split(',').map((s) => s.trim().toUpperCase())) {
    if (part !== 'READ' && part !== 'WRITE') bad(`--op must be READ, WRITE or both (READ,WRITE), not '${part || text}'`);
    if (!out.includes(part)) out.push(part);
  }
  return out;
}

/**
 * Descriptors per transfer when --batch is not given: as many as keep the `depth` transfers in flight on
 * disjoint blocks of the pool, at most 32 (a layer's worth of KV blocks) and at least 1.
 */
export function defaultBatch(pool: number, depth: number, block: number): number {
  return Math.max(1, Math.min(MAX_DEFAULT_BATCH, Math.floor(pool / (depth * block))));
}

export function batchFor(options: Pick<BenchOptions, 'batch' | 'pool' | 'depth'>, block: number): number {
  return options.batch ?? defaultBatch(options.pool, options.depth, block);
}

export function parseBenchOptions(raw: RawBenchOptions): BenchOptions {
  if (raw.listen !== undefined) bad('--listen is for the target (--target --listen host:port)');
  const latency = raw.latency ?? false;
  const blockSizes = raw.blockSizes === undefined ? (latency ? [4096] : DEFAULT_BLOCK_SIZES) : raw.blockSizes.split(',').map((s) => parseSize(s, 'block size'));
  if (blockSizes.length === 0) bad('--block-sizes is empty');
  const batch = positiveInt(raw.batch, '--batch');
  const depth = positiveInt(raw.depth, '--depth');
  if (latency && ((batch ?? 1) !== 1 || (depth ?? 1) !== 1)) bad('--latency measures one descriptor at a time: leave --batch and --depth out');
  const options: BenchOptions = {
    provider: raw.provider,
    ops: ops(raw.op, latency),
    blockSizes: [...new Set(blockSizes)].sort((a, b) => a - b),
    batch: latency ? 1 : batch,
    depth: latency ? 1 : (depth ?? DEFAULT_DEPTH),
    rails: positiveInt(raw.rails, '--rails'),
    stripeThreshold:
      raw.stripeThreshold === undefined ? undefined : raw.stripeThreshold.trim() === '0' ? 0 : parseSize(raw.stripeThreshold, '--stripe-threshold'),
    pool: raw.pool === undefined ? DEFAULT_POOL : parseSize(raw.pool, '--pool'),
    duration: 2,
    iters: positiveInt(raw.iters, '--iters'),
    fastPath: fastPath(raw.fastPath),
    sharedPool: sharedPool(raw.sharedPool),
    hugepages: raw.hugepages ?? false,
    busyPollUs: busyPoll(raw.busyPoll, latency),
    expressMaxBytes: raw.express === undefined ? undefined : raw.express.trim() === '0' ? 0 : parseSize(raw.express, '--express'),
    prepared: raw.prepared ?? true,
    latency,
    json: raw.json,
    chart: raw.chart,
    progress: raw.progress ?? true,
    fabricAddress: raw.fabricAddress,
    connect: raw.connect === undefined ? undefined : parseHostPort(raw.connect, '--connect'),
    device: devices(raw.device),
  };
  // Prepared lists carry host memory only: device pools post their descriptors anew.
  if (options.device.initiator !== 'host' || options.device.target !== 'host') options.prepared = false;
  if (raw.duration !== undefined) {
    const d = Number(raw.duration);
    if (!Number.isFinite(d) || d <= 0 || raw.duration.trim() === '') bad(`--duration must be a positive number of seconds, not '${raw.duration}'`);
    options.duration = d;
  }
  if (options.chart !== undefined && !/\.(svg|png)$/i.test(options.chart)) bad(`--chart must name a .svg or .png file, not '${options.chart}'`);
  // Every transfer must fit in the pool: a batch of blocks, on both sides (the target allocates the same size).
  for (const block of options.blockSizes) {
    const b = batchFor(options, block);
    if (b * block > options.pool) {
      bad(
        `the pool (${formatSize(options.pool)}) is smaller than one batch of ${b} × ${formatSize(block)} blocks: raise --pool or lower --batch / --block-sizes`,
      );
    }
  }
  return options;
}

export function parseTargetOptions(raw: RawBenchOptions): TargetOptions {
  if (raw.connect !== undefined) bad('--connect is for the initiator; a target waits with --listen');
  return {
    provider: raw.provider,
    rails: positiveInt(raw.rails, '--rails'),
    pool: raw.pool === undefined ? DEFAULT_POOL : parseSize(raw.pool, '--pool'),
    fastPath: fastPath(raw.fastPath),
    sharedPool: sharedPool(raw.sharedPool),
    hugepages: raw.hugepages ?? false,
    busyPollUs: busyPoll(raw.busyPoll, false),
    fabricAddress: raw.fabricAddress,
    listen: raw.listen === undefined ? undefined : parseHostPort(raw.listen, '--listen'),
    device: device(raw.device ?? 'host', '--device'),
  };
}

function device(text: string, what: string): string {
  const v = text.trim();
  if (v === 'host' || v === 'stand-in' || /^cuda:(0|[1-9]\d{0,3})$/.test(v)) return v;
  return bad(`${what} must be host, stand-in or cuda:N, not '${text}'`);
}

/** --device d (both sides) or --device initiator,target. */
function devices(text: string | undefined): { initiator: string; target: string } {
  const parts = (text ?? 'host').split(',');
  if (parts.length > 2) bad(`--device takes one device or initiator,target, not '${text}'`);
  const initiator = device(parts[0]!, '--device');
  return { initiator, target: parts.length === 2 ? device(parts[1]!, '--device') : initiator };
}
