// Fabric addresses on IP providers (tcp): which address an agent binds when nobody says, how to read the
// addresses in an agent's metadata (sockaddrs), and when a peer's address cannot be reached from here. A
// default of 127.0.0.1 made every agent on a second host unreachable: its peers dialled their own loopback,
// where libfabric's rxm retries a refused connection for ever, so the first transfer hung until its timeout.
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';

import { KvfError } from '../common/errors.js';

/** An IP endpoint as the tcp provider advertises it. */
export interface Endpoint {
  ip: string;
  port: number;
}

const AF_INET = 2;
const AF_INET6 = 10; // Linux

/**
 * The IPv4 address peers on other hosts can reach this one at: the address of the interface that carries the
 * default route, else the first non-loopback IPv4 address; undefined when the host has none (only loopback).
 */
export function routableAddress(routeTable = readRouteTable, interfaces = networkInterfaces): string | undefined {
  const all = interfaces();
  const ipv4 = (name: string): string | undefined => all[name]?.find((i) => i.family === 'IPv4' && !i.internal)?.address;
  const viaDefault = defaultRouteInterface(routeTable());
  return (
    (viaDefault && ipv4(viaDefault)) ??
    Object.keys(all)
      .map(ipv4)
      .find((a) => a !== undefined)
  );
}

function readRouteTable(): string {
  try {
    return readFileSync('/proc/net/route', 'utf8');
  } catch {
    return '';
  }
}

/** The interface of the lowest-metric default route in /proc/net/route (Iface Destination Gateway Flags … Metric). */
export function defaultRouteInterface(table: string): string | undefined {
  let best: { iface: string; metric: number } | undefined;
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 7 || f[1] !== '00000000' || (Number.parseInt(f[3]!, 16) & 1) === 0) continue; // RTF_UP
    const metric = Number(f[6]);
    if (!best || metric < best.metric) best = { iface: f[0]!, metric };
  }
  return best?.iface;
}

export function isLoopback(ip: string): boolean {
  return /^127\./.test(ip) || ip === '::1' || /^::ffff:127\./i.test(ip) || ip === 'localhost';
}

export function isWildcard(ip: string): boolean {
  return ip === '0.0.0.0' || ip === '::' || ip === '';
}

/** A sockaddr_in / sockaddr_in6 as the tcp provider puts it in metadata; undefined for other formats (efa GIDs, shm names). */
export function decodeEndpoint(bytes: Uint8Array): Endpoint | undefined {
  if (bytes.length < 8) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET && bytes.length >= 16) return { ip: [...bytes.subarray(4, 8)].join('.'), port };
  if (family === AF_INET6 && bytes.length >= 24) {
    const words: string[] = [];
    for (let i = 8; i < 24; i += 2) words.push(view.getUint16(i, false).toString(16));
    return { ip: compressIpv6(words), port };
  }
  return undefined;
}

export function formatEndpoint(e: Endpoint): string {
  return e.ip.includes(':') ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`;
}

/** Providers whose endpoint addresses are sockaddrs (efa's are GIDs, shm's names). */
export function isIpProvider(provider: string): boolean {
  return /^(tcp|sockets|verbs)/.test(provider);
}

/** The distinct addresses of an agent's rails, readable ('10.0.0.5:39181'); [] on providers without IP endpoints. */
export function endpointsOf(provider: string, rails: readonly Uint8Array[]): string[] {
  if (!isIpProvider(provider)) return [];
  return [
    ...new Set(
      rails
        .map(decodeEndpoint)
        .filter((e): e is Endpoint => e !== undefined)
        .map(formatEndpoint),
    ),
  ];
}

export interface ReachContext {
  /** This agent's rail addresses and the peer's, from metadata. */
  own: readonly Uint8Array[];
  peer: readonly Uint8Array[];
  peerName: string;
  /** Host identities ('<boot id>/<pid namespace>'; '' unknown): equal ones share a kernel and pid namespace. */
  ownHost: string;
  peerHost: string;
}

/**
 * Refuses a peer whose fabric address is loopback when it runs elsewhere: on another kernel (another machine),
 * or in another pid namespace while this agent itself is bound to a routable address (so the two are not meant
 * to meet on one loopback). Dialling it would reach this host's own loopback, and rxm would retry the refused
 * connection until the transfer's timeout. Same-host peers, and loopback-bound agents in one container, pass.
 */
export function checkReachable(c: ReachContext): void {
  const peer = c.peer.map(decodeEndpoint);
  const loop = peer.find((e) => e !== undefined && isLoopback(e.ip));
  if (!loop || (c.peerHost !== '' && c.peerHost === c.ownHost)) return;
  const boot = (id: string): string => id.split('/')[0] ?? '';
  const otherKernel = boot(c.peerHost) !== '' && boot(c.ownHost) !== '' && boot(c.peerHost) !== boot(c.ownHost);
  const own = c.own.map(decodeEndpoint).find((e) => e !== undefined);
  const ownRoutable = own !== undefined && !isLoopback(own.ip);
  if (!otherKernel && !ownRoutable) return;
  throw new KvfError(
    'KVF_ERR_PEER_UNREACHABLE',
    `peer '${c.peerName}' advertises fabric address ${formatEndpoint(loop)}, a loopback address, but runs ${otherKernel ? 'on another host' : 'in another container or namespace'}` +
      `${own ? ` (this agent is at ${formatEndpoint(own)})` : ''}: it cannot be reached. Bind the peer to a routable address ` +
      '(a worker: --listen/--advertise on its pod IP or --fabric-address; an agent: options.address or KVF_ADDRESS)',
    { peer: c.peerName },
  );
}

function compressIpv6(words: string[]): string {
  const s = words.join(':');
  const runs = [...s.matchAll(/(?:^|:)0(?::0)+(?::|$)/g)].sort((a, b) => b[0].length - a[0].length);
  const run = runs[0];
  return run ? `${s.slice(0, run.index)}::${s.slice(run.index + run[0].length)}` : s;
}
