// Both ends of the agents' metadata exchange, as far as they need no Agent state: the description an agent
// publishes (getLocalMetadata), and what loadRemoteMetadata decides from a peer's: whether this agent can talk
// to the peer at all (provider, reachability), whether the peer is on this host (and so what the same-host
// paths are offered), and how the addon's refusals of those paths are logged.
import { checkReachable, isIpProvider } from './address.js';
import { KvfError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { hostIdentity } from './host.js';
import type { AgentDescription } from './metadata.js';
import type { NativeAgent, NativeAgentInfo, NativeRegion } from './native.js';

export type AddedPeer = ReturnType<NativeAgent['addPeer']>;
type HostArg = Parameters<NativeAgent['addPeer']>[4];

/** What this agent tells peers: its rails, the `regions` it lists for them, and where it runs. */
export function localDescription(info: Readonly<NativeAgentInfo>, regions: NativeRegion[]): AgentDescription {
  return {
    name: info.name,
    provider: info.provider,
    virtAddr: info.virtAddr,
    rails: info.addresses,
    regions,
    host: { id: hostIdentity(), pid: process.pid, ...(info.regionTable ? { table: info.regionTable } : {}) },
  };
}

/** Refuses a peer on another provider (or addressing), and one whose address this agent cannot reach. */
export function checkPeer(desc: AgentDescription, own: Readonly<NativeAgentInfo>): void {
  if (desc.provider !== own.provider || desc.virtAddr !== own.virtAddr) {
    throw new KvfError('KVF_ERR_PROVIDER_MISMATCH', `peer '${desc.name}' uses provider ${desc.provider}; this agent uses ${own.provider}`, {
      peer: desc.name,
      provider: own.provider,
    });
  }
  // An address this agent cannot reach is refused now, with the address, not after the first transfer's timeout.
  if (isIpProvider(own.provider))
    checkReachable({ own: own.addresses, peer: desc.rails, peerName: desc.name, ownHost: hostIdentity(), peerHost: desc.host?.id ?? '' });
}

/**
 * The addon's `host` argument for the peer: set when the peer says it runs on this host. That is only the peer's
 * word: the addon confirms the peer's region table (inode and nonce) before it touches anything of that pid, then
 * checks every transfer against it; the fast path only if enabled.
 */
export function sameHostArg(desc: AgentDescription, fastPath: boolean): HostArg {
  const host = desc.host;
  const sameHost = host !== undefined && host.id !== '' && host.id === hostIdentity() && host.pid > 0;
  return sameHost ? { pid: host.pid, fastPath, ...(host.table ? { table: host.table } : {}) } : undefined;
}

/** Logs each same-host path the addon refused the peer, with its reason. */
export function logRefusedPaths(log: Logger | undefined, agent: string, peer: string, added: AddedPeer): void {
  if (added.tableRefused)
    log?.warn(
      { agent, peer, reason: added.tableRefused },
      'peer on this host: its region table is not confirmed, so the same-host paths are not used and transfers are not checked against it',
    );
  if (added.fastPathRefused) log?.info({ agent, peer, reason: added.fastPathRefused }, 'peer on this host reached over the fabric: fast path refused');
  if (added.mapRefused) log?.info({ agent, peer, reason: added.mapRefused }, "peer's shared memory not mapped: copies go by cross-memory attach");
}
