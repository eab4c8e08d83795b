// The options a user hands the Agent (AgentOptions for Agent.create, TransferOptions and PostOptions for a
// transfer), their checks, and how AgentOptions becomes the addon's NativeAgentOptions, provider choice
// included. Kept apart from agent.ts so the class holds state and the API's inputs are read in one place.
import { checkOptionKeys } from './options.js';
import { MAX_BUSY_POLL_US, tcpBinding } from './config.js';
import { KvfError, fromNative } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { METADATA_LIMITS } from './metadata.js';
import { stagingOptions, type StagingOptions } from './staging-options.js';
import { openWithHmem, type HmemOption } from './hmem.js';
import { addon, type NativeAgent, type NativeAgentOptions, type NativeEvent } from './native.js';

export interface AgentOptions {
  /** Unique name among the agents that talk to each other; sent with notifications. */
  name: string;
  /** 'tcp' | 'shm' | 'efa' or a full libfabric provider name. Default: FI_PROVIDER, else efa when present, else tcp. */
  provider?: string;
  /** Number of rails (endpoints). Default: one per device (all EFA NICs), one on tcp and shm. */
  rails?: number;
  /**
   * tcp: address to bind. Default KVF_ADDRESS, else (unless an interface is set) the host's routable address
   * (the default route's interface), else 127.0.0.1. Peers dial the address in this agent's metadata.
   */
  address?: string;
  /** Restrict to one libfabric domain: an interface name on tcp (also FI_TCP_IFACE), a device on efa. */
  domain?: string;
  /** Must be LIBFABRIC when given; default NIXL_BACKEND. */
  backend?: string;
  /** pino logger; false for none. Default: JSON on stderr at KVF_LOG_LEVEL (info). */
  logger?: Logger | false;
  /** How long close() lets transfers in flight finish before failing them with KVF_ERR_CLOSED. Default 10 s. */
  closeTimeoutMs?: number;
  /**
   * Contiguous runs of at least this many bytes are split across all rails (each NIC carries a share);
   * shorter ones go to the rails round-robin. Default 128 KiB; 0 never stripes.
   */
  stripeThreshold?: number;
  /**
   * Express lane: a transfer of at most this many bytes (≤ 16 fabric operations, no notification) is posted
   * on the calling thread and its completion reaped by the event loop itself, polling while it is in flight,
   * instead of crossing to a rail thread and back. Cuts small-transfer latency; the loop spins for at most
   * ~2 ms per burst. Default 64 KiB; 0 sends everything through the rail threads and keeps the loop from polling
   * for them. Not on shm (a peer killed inside shm's shared-memory lock would freeze the posting thread), where
   * the loop polls instead for a lone small transfer the rail thread carries: `info.expressMaxBytes` says what
   * applies.
   */
  expressMaxBytes?: number;
  /**
   * Busy polling, in microseconds (default 0: off). After its endpoint wakes up — also for serving a peer's
   * READ or WRITE, which leaves no completion behind — each rail thread keeps polling this long instead of
   * sleeping, so the next small requests of a burst pay no wake-up. Halves small-READ latency against this
   * agent as a passive target on tcp; costs a core while traffic lasts and bandwidth on small machines.
   * shm rails always poll; efa and tcp sleep in between by default.
   */
  busyPollUs?: number;
  /**
   * Same-host fast path: a peer on this host (same kernel and pid namespace) is reached by cross-memory attach,
   * one copy without the provider; reports say `path: 'cma'`. Default on; false (or KVF_FAST_PATH=0) keeps
   * every transfer on the fabric.
   */
  fastPath?: boolean;
  /** The staged path's chunk size, window, chunks lent to peers and deadlines (staging-options.ts). */
  staging?: StagingOptions;
  /**
   * Open the rails with FI_HMEM, so that the provider registers device regions itself and peers' NICs move them
   * directly (`path: 'hmem'`, GPUDirect RDMA). 'auto' (default): where that can work (a GPU, a libfabric with
   * CUDA offering FI_HMEM for the provider, FI_HMEM_DISABLE_P2P and FI_EFA_USE_DEVICE_RDMA not forbidding it);
   * true: required (KVF_ERR_PROVIDER_UNAVAILABLE without it; stand-in regions then take the path too); false: never.
   */
  hmem?: HmemOption;
}

export interface TransferOptions {
  /** Bytes delivered to the peer (as a notification from this agent) only after all the data has landed. */
  notification?: Uint8Array | string;
  /** Reject with KVF_ERR_TIMEOUT after this long; the fabric operations still complete or fail in the background. */
  timeoutMs?: number;
}

export interface PostOptions extends TransferOptions {
  /** Post only these descriptors of the prepared list, in this order. */
  indices?: Uint32Array | readonly number[];
}

const AGENT_OPTION_KEYS = [
  'name',
  'provider',
  'rails',
  'address',
  'domain',
  'backend',
  'logger',
  'closeTimeoutMs',
  'stripeThreshold',
  'expressMaxBytes',
  'busyPollUs',
  'fastPath',
  'staging',
  'hmem',
] as const satisfies readonly (keyof AgentOptions)[];
export const TRANSFER_OPTION_KEYS = ['notification', 'timeoutMs'] as const satisfies readonly (keyof TransferOptions)[];
export const POST_OPTION_KEYS = [...TRANSFER_OPTION_KEYS, 'indices'] as const satisfies readonly (keyof PostOptions)[];

/** Throws KVF_ERR_INVALID_ARGUMENT for the first option Agent.create cannot use; before anything is opened. */
export function checkAgentOptions(options: AgentOptions): void {
  if (options === null || typeof options !== 'object' || typeof options.name !== 'string' || options.name === '') {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'Agent.create needs options.name (a non-empty string)');
  }
  checkOptionKeys(options, AGENT_OPTION_KEYS, 'Agent.create');
  if (options.rails !== undefined && (!Number.isInteger(options.rails) || options.rails < 1 || options.rails > METADATA_LIMITS.maxRails)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `options.rails must be an integer from 1 to ${METADATA_LIMITS.maxRails}`);
  }
  if (options.stripeThreshold !== undefined && !(Number.isSafeInteger(options.stripeThreshold) && options.stripeThreshold >= 0)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.stripeThreshold must be an integer ≥ 0 (bytes)');
  }
  if (options.expressMaxBytes !== undefined && !(Number.isSafeInteger(options.expressMaxBytes) && options.expressMaxBytes >= 0)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.expressMaxBytes must be an integer ≥ 0 (bytes)');
  }
  if (options.busyPollUs !== undefined && !(Number.isInteger(options.busyPollUs) && options.busyPollUs >= 0 && options.busyPollUs <= MAX_BUSY_POLL_US)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', `options.busyPollUs must be an integer from 0 to ${MAX_BUSY_POLL_US} (µs)`);
  }
  stagingOptions(options.staging);
  if (options.hmem !== undefined && typeof options.hmem !== 'boolean' && options.hmem !== 'auto') {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', "options.hmem must be true, false or 'auto'");
  }
  const timeout = options.closeTimeoutMs;
  if (timeout !== undefined && (!Number.isInteger(timeout) || timeout < 0 || timeout > 2 ** 31 - 1)) {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.closeTimeoutMs must be an integer from 0 to 2^31-1');
  }
}

export type EventsCallback = (events: NativeEvent[] | undefined, records: Float64Array) => void;

/**
 * Opens the addon's agent for checked options: on `wanted` when a provider was asked for, else efa, falling
 * back to tcp only when efa is unavailable (any other failure is the user's to see).
 */
export function openNativeAgent(options: AgentOptions, wanted: string | undefined, onEvents: EventsCallback, records: Float64Array): NativeAgent {
  const open = (provider: string): NativeAgent => {
    const native: NativeAgentOptions = { name: options.name, provider };
    if (options.rails !== undefined) native.rails = options.rails;
    if (options.stripeThreshold !== undefined) native.stripeThreshold = options.stripeThreshold;
    if (options.expressMaxBytes !== undefined) native.expressMaxBytes = options.expressMaxBytes;
    if (options.busyPollUs !== undefined) native.busyPollUs = options.busyPollUs;
    if (openWithHmem(options.hmem, provider)) native.hmem = true;
    if (provider.startsWith('tcp')) Object.assign(native, tcpBinding(options.address, options.domain));
    else if (options.domain !== undefined) native.domain = options.domain;
    try {
      const agent = new addon.NativeAgent(native, onEvents, records);
      // The addon holds the callback weakly; this property holds it strongly, so Agent, native object and
      // callback form a plain JS cycle that the GC can collect when the user drops an unclosed Agent.
      Object.defineProperty(agent, 'onEvents', { value: onEvents });
      return agent;
    } catch (err) {
      throw fromNative(err, { provider });
    }
  };
  if (wanted !== undefined) return open(wanted);
  try {
    return open('efa');
  } catch (err) {
    if ((err as KvfError).code !== 'KVF_ERR_PROVIDER_UNAVAILABLE') throw err;
    return open('tcp;ofi_rxm');
  }
}

/** A notification's bytes: strings as UTF-8, byte arrays as given (not copied). */
export function notificationBytes(data: Uint8Array | string): Uint8Array {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (data instanceof Uint8Array) return data;
  throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'a notification must be a string or Uint8Array');
}
