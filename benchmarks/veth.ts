// Issue 19's cross-host row: kvfabric's READ between two agents on two simulated hosts (network and pid
// namespaces joined by veths to one bridge: test/helpers/hosts.ts), against the raw libfabric program
// (benchmarks/peers/fi_raw_bench.c, its target forked into the other namespace) and iperf3 across the same
// link. 1 MiB READ GB/s and 4 KiB READ latency p50, tcp provider, 1 and 4 rails, kvfabric's fast path off.
// One run of each. Prints a markdown table with the ratios and writes benchmarks/out/veth.json.
//
// What the link is: a veth pair into a Linux bridge and another veth pair out, all in one kernel. No NIC, no
// wire: every byte is copied by the CPUs that also run both peers, so the numbers measure the kernel's TCP
// stack and the programs on this machine's cores, not a network. They say whether kvfabric keeps up with the
// provider across a real (if software) link: the ratios, not the absolute numbers, are the point.
//
//   npm run bench:veth -- [--duration 2] [--out benchmarks/out/veth.json]
//
// Needs root (ip netns, veth), and iperf3, which the bench alone uses: apt-get install -y iperf3 (it is not
// part of kvfabric's install). The npm script builds dist/ and benchmarks/peers/build/ first.
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { Hosts, hostsUnavailable, type Host } from '../test/helpers/hosts.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const CLI = join(root, 'dist', 'cli', 'main.js');
const RAW = join(here, 'peers', 'build', 'fi_raw_bench');
const { values } = parseArgs({
  options: {
    duration: { type: 'string', default: '2' },
    out: { type: 'string', default: join(here, 'out', 'veth.json') },
  },
});
const duration = values.duration!;
/** Every child gets a deadline: a measurement takes `duration` s plus setup; a minute more means it hung. */
const DEADLINE_MS = Number(duration) * 1000 + 60_000;

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a program to its end (killed at the deadline); rejects unless it exits 0. */
function run(cmd: string[], what: string, timeoutMs = DEADLINE_MS): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd[0]!, cmd.slice(1), { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d));
    child.stderr.on('data', (d: Buffer) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve({ code, stdout, stderr });
      else reject(new Error(`${what} exited ${signal ?? code}${signal === 'SIGKILL' ? ` (deadline ${timeoutMs} ms)` : ''}:\n${stderr.slice(-4000)}`));
    });
  });
}

/** A long-lived child (a bench target, an iperf3 server): resolves with the match once its stdout shows `ready`. */
function serve(cmd: string[], ready: RegExp, what: string): Promise<{ match: RegExpExecArray; exited: Promise<void>; kill(): void }> {
  const child = spawn(cmd[0]!, cmd.slice(1), { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const kill = (): void => void child.kill('SIGKILL'); // unshare --kill-child takes what it runs along
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      kill();
      reject(new Error(`${what} not ready within 60 s:\n${stdout}${stderr}`));
    }, 60_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d;
      const match = ready.exec(stdout);
      if (match) {
        clearTimeout(timer);
        resolve({ match, exited, kill });
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready:\n${stderr}`));
    });
  });
}

/** Waits for a served child to exit by itself (it was told to stop); kills it at the deadline. */
async function finished(s: { exited: Promise<void>; kill(): void }): Promise<void> {
  const timer = setTimeout(() => s.kill(), 15_000);
  await s.exited;
  clearTimeout(timer);
}

/** Bytes `host` sent into the bridge so far: the receive counter of its veth's end in this namespace. */
function sentBy(host: Host): number {
  return Number(readFileSync(`/sys/class/net/${host.link}/statistics/rx_bytes`, 'utf8'));
}

interface Measured {
  value: number;
  /** Payload bytes the measurement moved, and the bytes the target's link carried meanwhile (headers included). */
  payload: number;
  onLink: number;
  detail: unknown;
}

/** Runs `body` and counts what the data-sending host put on its link meanwhile: proof that the bytes crossed it. */
async function counted(sender: Host, body: () => Promise<{ value: number; payload: number; detail: unknown }>): Promise<Measured> {
  const before = sentBy(sender);
  const r = await body();
  const onLink = sentBy(sender) - before;
  if (onLink < r.payload) throw new Error(`only ${onLink} bytes crossed ${sender.link} for ${r.payload} bytes of payload: not over the veth`);
  return { ...r, onLink };
}

type Kind = 'bw' | 'lat';

interface KvfPoint {
  gbps: number;
  bytes: number;
  path: string;
  rails: number;
  latencyMs: { p50: number };
  wallLatencyMs: { p50: number };
}

/**
 * kvfabric: a standalone `bench --target` on the owner's host, `bench --connect` on the reader's, each in its
 * own pid namespace (so no same-host path could be taken even if the fast path were on).
 */
async function kvfabric(net: Hosts, reader: Host, owner: Host, rails: number, kind: Kind): Promise<Measured> {
  const common = ['--provider', 'tcp', '--rails', String(rails), '--fast-path', 'off', '--pool', '256M'];
  // --latency busy-polls the initiator (1000 µs); the forked target of `kvfabric bench` gets the same, so this one does too.
  const target = await serve(
    [
      ...net.prefix(owner),
      process.execPath,
      CLI,
      'bench',
      '--target',
      '--listen',
      `${owner.ip}:0`,
      '--fabric-address',
      owner.ip,
      '--busy-poll',
      kind === 'lat' ? '1000' : '0',
      ...common,
    ],
    /listening on [\d.]+:(\d+)/,
    'kvfabric bench target',
  );
  const dir = mkdtempSync(join(tmpdir(), 'kvf-veth-'));
  try {
    return await counted(owner, async () => {
      const json = join(dir, 'bench.json');
      // The same shapes as benchmarks/transfer-vs-peers.ts: 64 MiB in flight as 16 transfers of 4 × 1 MiB.
      const shape = kind === 'bw' ? ['--op', 'READ', '--block-sizes', '1M', '--depth', '16', '--batch', '4'] : ['--latency'];
      await run(
        [
          ...net.prefix(reader),
          process.execPath,
          CLI,
          'bench',
          '--connect',
          `${owner.ip}:${target.match[1]}`,
          '--fabric-address',
          reader.ip,
          ...common,
          ...shape,
          '--duration',
          duration,
          '--no-progress',
          '--json',
          json,
        ],
        `kvfabric bench ${kind} ${rails} rail(s)`,
      );
      const p = (JSON.parse(readFileSync(json, 'utf8')) as { points: KvfPoint[] }).points[0]!;
      if (p.path !== 'fabric') throw new Error(`kvfabric's READ went by path ${p.path}, not the fabric`);
      return { value: kind === 'bw' ? p.gbps : p.latencyMs.p50 * 1000, payload: p.bytes, detail: p };
    });
  } finally {
    await finished(target);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The raw program in the reader's namespace; its target forks into the owner's (--target-netns). `wait`:
 * its polling flags (latency: both sides spin by default, as in benchmarks/transfer-vs-peers.ts).
 */
function raw(reader: Host, owner: Host, rails: number, kind: Kind, wait: string[] = []): Promise<Measured> {
  const shape = kind === 'bw' ? ['--mode', 'bw', '--block', '1048576', '--depth', '64'] : ['--mode', 'lat', '--block', '4096'];
  const args = [...shape, '--op', 'read', '--provider', 'tcp', '--rails', String(rails), '--duration', duration, ...wait];
  const ns = ['--addr', reader.ip, '--target-addr', owner.ip, '--target-netns', `/run/netns/${owner.ns}`];
  return counted(owner, async () => {
    const r = await run(['ip', 'netns', 'exec', reader.ns, RAW, ...args, ...ns], `fi_raw_bench ${kind} ${rails} rail(s)`);
    const j = JSON.parse(r.stdout.trim().split('\n').pop()!) as { gbps: number; p50Us: number; bytes: number; verified: boolean; domain: string };
    if (!j.verified) throw new Error(`fi_raw_bench: data check failed: ${r.stdout}`);
    return { value: kind === 'bw' ? j.gbps : j.p50Us, payload: j.bytes, detail: j };
  });
}

// iperf3 takes whole seconds, and -t 0 means "until stopped".
const iperfSeconds = String(Math.max(1, Math.round(Number(duration))));

/** iperf3 with `streams` TCP connections, the owner's host sending (-R), as READ moves data owner → reader. */
async function iperf3(net: Hosts, reader: Host, owner: Host, streams: number): Promise<Measured> {
  const server = await serve([...net.prefix(owner), 'iperf3', '-s', '-1', '-B', owner.ip, '--forceflush'], /Server listening/, 'iperf3 server');
  try {
    return await counted(owner, async () => {
      const r = await run(
        [...net.prefix(reader), 'iperf3', '-c', owner.ip, '-R', '-P', String(streams), '-t', iperfSeconds, '-J', '--connect-timeout', '5000'],
        `iperf3 -P ${streams}`,
      );
      const j = JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number; bytes: number } } };
      return { value: j.end.sum_received.bits_per_second / 8 / 1e9, payload: j.end.sum_received.bytes, detail: j.end.sum_received };
    });
  } finally {
    await finished(server);
  }
}

function linkDescription(net: Hosts, h: Host): string {
  const mtu = readFileSync(`/sys/class/net/${h.link}/mtu`, 'utf8').trim();
  return `veth pair → Linux bridge → veth pair (kernel ${describeMachine().kernel}), MTU ${mtu}, no qdisc shaping; hosts ${net.hosts.map((x) => x.ip).join(', ')}`;
}

async function main(): Promise<void> {
  const unavailable = hostsUnavailable();
  if (unavailable) throw new Error(`the simulated hosts cannot run here: ${unavailable}`);
  await run(['iperf3', '--version'], 'iperf3 --version', 10_000).catch(() => {
    throw new Error('iperf3 is not installed: apt-get install -y iperf3 (the bench needs it; kvfabric does not)');
  });
  // The machine may be shared: its load, before and after, says how much else competed for the cores.
  const load = { before: loadavg(), after: [] as number[] };
  const net = Hosts.create(2);
  const [reader, owner] = net.hosts as [Host, Host];
  const results: Record<string, Measured> = {};
  const rows: { what: string; rails: number; kvfabric: number; raw: number; iperf3?: number; unit: string }[] = [];
  try {
    for (const rails of [1, 4]) {
      const step = async (name: string, f: () => Promise<Measured>): Promise<number> => {
        console.error(`${name}, ${rails} rail(s) …`);
        const m = await f();
        results[`${name} ${rails}`] = m;
        console.error(`  ${m.value.toFixed(3)} (payload ${m.payload} B, ${m.onLink} B on the link)`);
        return m.value;
      };
      const kb = await step('kvfabric READ 1 MiB', () => kvfabric(net, reader, owner, rails, 'bw'));
      const rb = await step('raw READ 1 MiB', () => raw(reader, owner, rails, 'bw'));
      const ib = await step(`iperf3 -P ${rails}`, () => iperf3(net, reader, owner, rails));
      rows.push({ what: 'READ 1 MiB', rails, kvfabric: kb, raw: rb, iperf3: ib, unit: 'GB/s' });
      const kl = await step('kvfabric READ 4 KiB p50', () => kvfabric(net, reader, owner, rails, 'lat'));
      const rl = await step('raw READ 4 KiB p50', () => raw(reader, owner, rails, 'lat'));
      // Spinning on both sides leaves the kernel's TCP and veth work no core on a small, busy machine (2 cores
      // here, shared): the raw program then waits out scheduler slices (p50 ~8 ms with others' load, ~10 µs
      // without). Yielding between polls is the baseline that still means something there; both are reported.
      const ry = await step('raw READ 4 KiB p50 yielding', () => raw(reader, owner, rails, 'lat', ['--target-wait', 'yield', '--initiator-wait', 'yield']));
      rows.push({ what: 'READ 4 KiB latency p50, vs raw spinning (as bench:transfer)', rails, kvfabric: kl, raw: rl, unit: 'µs' });
      rows.push({ what: 'READ 4 KiB latency p50, vs raw yielding between polls', rails, kvfabric: kl, raw: ry, unit: 'µs' });
    }
    load.after = loadavg();
    const machine = describeMachine();
    const link = linkDescription(net, owner);
    const f = (x: number, unit: string) => `${x.toFixed(unit === 'µs' ? 1 : 2)} ${unit}`;
    console.log(`\nkvfabric across a veth, one run of ${duration} s each, ${machine.cpu} × ${machine.cores} cores, libfabric ${machine.libfabric}`);
    console.log(`link: ${link}`);
    console.log(
      `load average (1, 5, 15 min) before ${load.before.map((x) => x.toFixed(2)).join(', ')}, after ${load.after.map((x) => x.toFixed(2)).join(', ')}`,
    );
    console.log('| measurement | rails | kvfabric | raw libfabric | kvfabric / raw | iperf3 (streams = rails) | kvfabric / iperf3 |');
    console.log('|---|---|---|---|---|---|---|');
    for (const r of rows) {
      const i = r.iperf3 === undefined ? ['—', '—'] : [f(r.iperf3, r.unit), (r.kvfabric / r.iperf3).toFixed(2)];
      console.log(`| ${r.what} | ${r.rails} | ${f(r.kvfabric, r.unit)} | ${f(r.raw, r.unit)} | ${(r.kvfabric / r.raw).toFixed(2)} | ${i[0]} | ${i[1]} |`);
    }
    mkdirSync(dirname(values.out!), { recursive: true });
    writeFileSync(values.out!, JSON.stringify({ date: new Date().toISOString(), machine, link, load, duration: Number(duration), rows, results }, null, 2));
    console.log(`\nwrote ${values.out}`);
  } finally {
    net.destroySync();
  }
}

await main();
