// Which backend and libfabric provider an agent uses, from options first and the environment second
// (the seed deployment's NIXL_BACKEND and FI_* variables).
import { routableAddress } from './address.js';
import { KvfError } from '../common/errors.js';

export const SUPPORTED_BACKENDS = ['LIBFABRIC'] as const;

/** The longest busy polling an agent takes (AgentOptions.busyPollUs, µs); the addon's kMaxBusyPollUs (test/limits.test.ts). */
export const MAX_BUSY_POLL_US = 10_000_000;
export type Backend = (typeof SUPPORTED_BACKENDS)[number];

/** Short names users type, and the provider stack that gives FI_EP_RDM with RMA over them. */
const PROVIDER_ALIASES: Record<string, string> = {
  tcp: 'tcp;ofi_rxm',
  verbs: 'verbs;ofi_rxm',
  shm: 'shm',
  efa: 'efa',
  sockets: 'sockets',
};

export function resolveBackend(option: string | undefined, env: NodeJS.ProcessEnv = process.env): Backend {
  if (option !== undefined && typeof option !== 'string') {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.backend must be a string');
  }
  const raw = option ?? env.NIXL_BACKEND;
  if (raw === undefined || raw.trim() === '') return 'LIBFABRIC';
  const name = raw.trim().toUpperCase();
  if ((SUPPORTED_BACKENDS as readonly string[]).includes(name)) return name as Backend;
  const source = option !== undefined ? 'backend option' : 'NIXL_BACKEND';
  throw new KvfError(
    'KVF_ERR_BACKEND_UNSUPPORTED',
    `${source}=${raw} is not supported: kvfabric carries KV over ${SUPPORTED_BACKENDS.join(', ')} only ` +
      `(set NIXL_BACKEND=LIBFABRIC or leave it unset; pick the fabric with FI_PROVIDER=efa|tcp|shm)`,
  );
}

/** Expands an alias ('tcp' → 'tcp;ofi_rxm'); full libfabric names pass through. */
export function providerStack(name: string): string {
  return PROVIDER_ALIASES[name.trim().toLowerCase()] ?? name.trim();
}

/**
 * The provider asked for, or undefined for automatic choice (efa when present, else tcp).
 * FI_PROVIDER may be a list ("efa,tcp": the first wins) or an exclusion ("^psm2": no preference).
 */
export function requestedProvider(option: string | undefined, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (option !== undefined && typeof option !== 'string') {
    throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.provider must be a string');
  }
  if (option !== undefined && option.trim() !== '') return providerStack(option);
  const raw = env.FI_PROVIDER?.trim();
  if (!raw || raw.startsWith('^')) return undefined;
  return providerStack(raw.split(',')[0]!);
}

export interface BindChoice {
  node?: string;
  domain?: string;
}

/**
 * Where a tcp endpoint listens: the configured address (KVF_ADDRESS) or interface (FI_TCP_IFACE), else the
 * host's routable address (the default route's interface), so that a peer on another host can dial it; only a
 * host without one binds 127.0.0.1. The address is always explicit (FI_SOURCE): without one the two sides of a
 * same-host pair may pick different interfaces (eth0 vs lo) and fail with "Transport endpoint is not connected".
 * Serving workers pass the address they derive from their own --listen/--advertise (loopback stays loopback).
 */
export function tcpBinding(
  address: string | undefined,
  domain: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
  routable: () => string | undefined = routableAddress,
): BindChoice {
  const iface = domain ?? env.FI_TCP_IFACE;
  const node = address ?? env.KVF_ADDRESS ?? (iface ? undefined : (routable() ?? '127.0.0.1'));
  const out: BindChoice = {};
  if (node !== undefined) out.node = node;
  if (iface !== undefined) out.domain = iface;
  return out;
}
