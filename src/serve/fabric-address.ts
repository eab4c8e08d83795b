// Which address a worker's tcp agent binds. Peers dial the address in the agent's metadata, not the gRPC
// address, so a worker that listens on its pod IP but whose agent sat on 127.0.0.1 was reachable for RPCs and
// unreachable for KV: every pull timed out and turned into local prefill. So the fabric follows the control
// plane: a worker on loopback stays on loopback, one on a specific address binds that address, one on a
// wildcard binds the address it advertises (the pod IP in the manifests).
import { isIP } from 'node:net';

import { isLoopback, isWildcard } from '../fabric/address.js';

export interface FabricAddressChoice {
  /** The address to pass as AgentOptions.address; undefined: the agent's own default (KVF_ADDRESS, FI_TCP_IFACE, default route). */
  address: string | undefined;
  /** Where it comes from, for `kvfabric info` and `doctor`. */
  source: string;
}

interface Addresses {
  fabricAddress?: string | undefined;
  listen: string;
  advertise?: string | undefined;
}

export function workerFabricAddress(c: Addresses, env: NodeJS.ProcessEnv = process.env): FabricAddressChoice {
  if (c.fabricAddress) return { address: c.fabricAddress, source: 'fabricAddress (--fabric-address, KVF_FABRIC_ADDRESS)' };
  // The agent's own settings win over anything derived: whoever set them meant this host's fabric.
  if (env.KVF_ADDRESS) return { address: undefined, source: 'KVF_ADDRESS' };
  if (env.FI_TCP_IFACE) return { address: undefined, source: 'FI_TCP_IFACE' };
  const listen = ipOf(c.listen);
  if (listen !== undefined && !isWildcard(listen)) return { address: listen, source: `the listen address ${c.listen}` };
  const advertised = c.advertise === undefined ? undefined : ipOf(c.advertise);
  if (advertised !== undefined && !isWildcard(advertised)) return { address: advertised, source: `the advertised address ${c.advertise}` };
  return { address: undefined, source: "the default route's interface (listening on all addresses)" };
}

/** The IP of host:port ('localhost' counts as 127.0.0.1); undefined for a DNS name. */
function ipOf(hostPort: string): string | undefined {
  const host = hostPort.slice(0, hostPort.lastIndexOf(':')).replace(/^\[(.*)\]$/, '$1');
  if (host === 'localhost') return '127.0.0.1';
  if (host === '') return '0.0.0.0';
  return isIP(host) ? host : undefined;
}

/** A warning when peers would dial loopback for KV while the gRPC address they are given is routable. */
export function loopbackWarning(fabric: readonly string[], advertise: string | undefined): string | undefined {
  const advertisedIp = advertise === undefined ? undefined : ipOf(advertise);
  const fabricLoop = fabric.find((e) => isLoopback(e.replace(/^\[?(.*?)\]?:\d+$/, '$1')));
  if (!fabricLoop || advertise === undefined || (advertisedIp !== undefined && isLoopback(advertisedIp))) return undefined;
  return `the fabric address ${fabricLoop} is loopback while the advertised gRPC address ${advertise} is not: peers on other hosts reach the worker's RPCs but not its KV (KVF_ERR_PEER_UNREACHABLE); listen on or advertise a routable IP, or set --fabric-address / KVF_FABRIC_ADDRESS`;
}
