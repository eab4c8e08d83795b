// Simulated hosts for tests: network namespaces joined by veth pairs to one bridge (10.77.<n>.0/24; the bridge,
// in this process's namespace, is .1, host i is .(i+2) with a default route via the bridge), and processes run
// inside them in a pid namespace of their own (`ip netns exec NS unshare --pid --fork --mount-proc`), so an
// agent's host identity (boot id + pid namespace, src/fabric/host.ts) differs from every other host's and the
// same-host fast paths are never taken: bytes cross the veths through the tcp provider, as between machines.
// Links can be cut, healed and impaired (loss, latency, rate: tc netem, nftables, tbf). Names carry this process's pid, so parallel runs never clash,
// and a later run removes what a killed run left behind; destroy() (and an exit hook) remove everything.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

const PREFIX = 'kvf';

export interface Host {
  index: number;
  /** Network namespace name. */
  ns: string;
  ip: string;
  /** The veth end on the bridge, in this process's namespace: cut and shaped here. */
  link: string;
}

/** Why the hosts harness cannot run here, or false when it can. */
export function hostsUnavailable(): string | false {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'needs root (ip netns, veth, tc)';
  for (const [tool, args] of [
    ['ip', ['netns', 'list']],
    ['unshare', ['--version']],
    ['tc', ['-V']],
  ] as const) {
    try {
      execFileSync(tool, args, { stdio: 'ignore' });
    } catch {
      return `${tool} ${args.join(' ')} is unavailable (iproute2, util-linux)`;
    }
  }
  return false;
}

let netem: string | false | undefined;

/** Why delay (and netem loss) cannot be simulated here: the kernel lacks sch_netem (CONFIG_NET_SCH_NETEM). */
export function netemUnavailable(): string | false {
  if (netem !== undefined) return netem;
  const probe = `${PREFIX}p${process.pid}`;
  try {
    ip('link', 'add', probe, 'type', 'veth', 'peer', 'name', `${probe}x`);
    execFileSync('tc', ['qdisc', 'add', 'dev', probe, 'root', 'netem', 'delay', '1ms'], { stdio: 'pipe' });
    netem = false;
  } catch (err) {
    netem = `tc netem is unavailable (a kernel without sch_netem?): ${String((err as { stderr?: unknown }).stderr ?? err).trim()}`;
  } finally {
    quiet('link', 'del', probe);
  }
  return netem;
}

/** Why packet loss cannot be simulated here: neither netem nor nftables (the `nft` tool) is available. */
export function lossUnavailable(): string | false {
  if (netemUnavailable() === false) return false;
  try {
    execFileSync('nft', ['--version'], { stdio: 'ignore' });
    return false;
  } catch {
    return 'neither tc netem nor nftables (nft) is available to drop packets';
  }
}

const live = new Set<Hosts>();
process.once('exit', () => {
  for (const h of live) h.destroySync();
});

export class Hosts {
  readonly hosts: Host[];
  /** This process's address on the bridge: processes in the hosts reach the test process (a frontend) here. */
  readonly gateway: string;
  readonly #bridge: string;

  private constructor(bridge: string, gateway: string, hosts: Host[]) {
    this.#bridge = bridge;
    this.gateway = gateway;
    this.hosts = hosts;
  }

  /** `count` hosts on a fresh bridge. Undoes what it made if any step fails. */
  static create(count: number): Hosts {
    sweepStale();
    const subnet = freeSubnet();
    const tag = `${process.pid}${String.fromCharCode(97 + live.size)}`; // a second set in one process gets its own names
    const bridge = `${PREFIX}b${tag}`;
    const hosts = Array.from({ length: count }, (_, i) => ({
      index: i,
      ns: `${PREFIX}-${tag}-${i}`,
      ip: `10.77.${subnet}.${i + 2}`,
      link: `${PREFIX}h${tag}${i}`,
    }));
    const set = new Hosts(bridge, `10.77.${subnet}.1`, hosts);
    live.add(set);
    try {
      ip('link', 'add', bridge, 'type', 'bridge');
      ip('addr', 'add', `${set.gateway}/24`, 'dev', bridge);
      ip('link', 'set', bridge, 'up');
      for (const h of hosts) {
        ip('netns', 'add', h.ns);
        ip('link', 'add', h.link, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns);
        ip('link', 'set', h.link, 'master', bridge, 'up');
        ip('-n', h.ns, 'addr', 'add', `${h.ip}/24`, 'dev', 'eth0');
        ip('-n', h.ns, 'link', 'set', 'eth0', 'up');
        ip('-n', h.ns, 'link', 'set', 'lo', 'up');
        ip('-n', h.ns, 'route', 'add', 'default', 'via', set.gateway);
      }
    } catch (err) {
      set.destroySync();
      throw err;
    }
    return set;
  }

  /**
   * The command prefix that runs a program on `host`: its network namespace, and a pid namespace of its own
   * whose processes die with the prefix's process (--kill-child), so killing the spawned child kills them.
   */
  prefix(host: Host): string[] {
    return ['ip', 'netns', 'exec', host.ns, 'unshare', '--pid', '--fork', '--mount-proc', '--kill-child'];
  }

  /** Cuts `host` off the bridge: every packet to or from it is lost until heal(). */
  cut(host: Host): void {
    ip('link', 'set', host.link, 'down');
  }

  heal(host: Host): void {
    ip('link', 'set', host.link, 'up');
  }

  /** Adds latency to both directions of host's link (sch_netem: see netemUnavailable()). */
  delay(host: Host, ms: number): void {
    this.#qdisc(host, ['netem', 'delay', `${ms}ms`]);
  }

  /** Drops `percent` of the packets in each direction: netem where the kernel has it, else an nftables rule in the host. */
  loss(host: Host, percent: number): void {
    if (netemUnavailable() === false) return this.#qdisc(host, ['netem', 'loss', `${percent}%`]);
    const chain = (name: string, hook: string): string =>
      `chain ${name} { type filter hook ${hook} priority 0; policy accept; numgen random mod 100 < ${percent} drop; }`;
    execFileSync('ip', ['netns', 'exec', host.ns, 'nft', '-f', '-'], {
      input: `table inet ${PREFIX}loss {\n${chain('in', 'input')}\n${chain('out', 'output')}\n}\n`,
      stdio: ['pipe', 'ignore', 'pipe'],
    });
  }

  /** Limits both directions of host's link to `mbit` Mbit/s (tbf, in every kernel): transfers take long enough to cut. */
  rate(host: Host, mbit: number): void {
    this.#qdisc(host, ['tbf', 'rate', `${mbit}mbit`, 'burst', '64kb', 'latency', '2s']);
  }

  /** Removes delay, loss and rate limits. */
  clear(host: Host): void {
    this.#qdisc(host, []);
    try {
      execFileSync('ip', ['netns', 'exec', host.ns, 'nft', 'delete', 'table', 'inet', `${PREFIX}loss`], { stdio: 'ignore' });
    } catch {
      // no table (netem was used, or nothing)
    }
  }

  #qdisc(host: Host, qdisc: string[]): void {
    for (const [args, dev] of [
      [[], host.link],
      [['-n', host.ns], 'eth0'],
    ] as const) {
      try {
        execFileSync('tc', [...args, 'qdisc', 'del', 'dev', dev, 'root'], { stdio: 'ignore' });
      } catch {
        // none yet
      }
      if (qdisc.length > 0) execFileSync('tc', [...args, 'qdisc', 'add', 'dev', dev, 'root', ...qdisc], { stdio: 'pipe' });
    }
  }

  /** Removes the namespaces (their processes must be gone or going), the veths and the bridge. Never throws. */
  destroySync(): void {
    for (const h of this.hosts) {
      // Deleting the root-side veth removes the pair at once, even while a dying process still holds the namespace.
      quiet('link', 'del', h.link);
      killNamespace(h.ns);
      quiet('netns', 'del', h.ns);
    }
    quiet('link', 'del', this.#bridge);
    live.delete(this);
  }
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: 'pipe' });
}

function quiet(...args: string[]): void {
  try {
    ip(...args);
  } catch {
    // already gone
  }
}

/** SIGKILLs whatever still runs in a namespace (a child that outlived its test). */
function killNamespace(ns: string): void {
  try {
    const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split(/\s+/).filter(Boolean);
    for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
  } catch {
    // gone already
  }
}

/** Removes namespaces and links of runs whose process is gone (a run killed before its cleanup). */
function sweepStale(): void {
  const dead = (tag: string): boolean => {
    const pid = Number(/^\d+/.exec(tag)?.[0]);
    if (!pid || pid === process.pid) return false;
    try {
      process.kill(pid, 0);
      return false;
    } catch {
      return true;
    }
  };
  let names: string[] = [];
  try {
    names = readdirSync('/run/netns');
  } catch {
    // no namespaces yet
  }
  for (const ns of names) {
    const m = new RegExp(`^${PREFIX}-(\\w+)-\\d+$`).exec(ns);
    if (m && dead(m[1]!)) {
      killNamespace(ns);
      quiet('netns', 'del', ns);
    }
  }
  for (const link of readdirSync('/sys/class/net')) {
    const m = new RegExp(`^${PREFIX}[bh](\\d+[a-z])\\d*$`).exec(link);
    if (m && dead(m[1]!)) quiet('link', 'del', link);
  }
}

/** A 10.77.<n>.0/24 that no interface here uses yet (another run's bridge, say). */
function freeSubnet(): number {
  const used = new Set<number>();
  for (const m of execFileSync('ip', ['-4', '-o', 'addr'], { encoding: 'utf8' }).matchAll(/inet 10\.77\.(\d+)\./g)) used.add(Number(m[1]));
  const start = (process.pid % 250) + 1;
  for (let i = 0; i < 250; i++) {
    const n = ((start + i) % 250) + 1;
    if (!used.has(n)) return n;
  }
  throw new Error('no free 10.77.<n>.0/24 subnet');
}

/** The pid (in this namespace) of the program a prefix()ed child runs: the child of its unshare process. */
export function innerPid(unsharePid: number): number | undefined {
  try {
    const kids = readFileSync(`/proc/${unsharePid}/task/${unsharePid}/children`, 'utf8').trim().split(/\s+/);
    return kids[0] ? Number(kids[0]) : undefined;
  } catch {
    return undefined;
  }
}
