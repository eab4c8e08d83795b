// Runs kvfabric's peers side by side on this machine for issue 5's reference cases, best of N runs each,
// prints a table and writes benchmarks/out/peers.json. A peer that is missing or fails is recorded with
// the exact reason (command + message) and the run goes on.
//
//   node --import tsx benchmarks/peers/run.ts [--repeat 3] [--only raw,memcpy,...] [--python /tmp/peers-venv/bin/python]
//
// Peers: raw libfabric (fi_raw_bench.c: the provider's ceiling for kvfabric's pattern), memcpy (one thread),
// iperf3 (loopback TCP), ucx_perftest (ucp_put_bw over tcp), fi_pingpong (tcp, shm), Mooncake Transfer
// Engine (TCP) and NIXL (UCX) from a Python venv. See benchmarks/PEERS.md for how to install each.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release, totalmem, hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    repeat: { type: 'string', default: '3' },
    only: { type: 'string' },
    python: { type: 'string', default: process.env.PEERS_PYTHON ?? '/tmp/peers-venv/bin/python' },
    duration: { type: 'string', default: '3' },
    out: { type: 'string', default: join(here, '..', 'out', 'peers.json') },
  },
});
const repeat = Number(values.repeat);
const duration = Number(values.duration);
const only = values.only ? new Set(values.only.split(',')) : undefined;
const python = values.python!;
const bin = join(here, 'build');

type Metric = 'gbps' | 'p50Us' | 'postNsPerDesc';
interface Case {
  peer: string; // group name for --only
  name: string;
  metric: Metric;
  better: 'max' | 'min';
  run: () => Promise<Record<string, unknown>>;
}
interface Outcome {
  peer: string;
  name: string;
  metric: Metric;
  best?: number;
  runs: number[];
  detail?: Record<string, unknown>;
  command?: string;
  error?: string;
}

class PeerError extends Error {}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

function killGroup(child: ReturnType<typeof spawn>) {
  try {
    if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
  } catch {
    child.kill('SIGKILL');
  }
}

function exec(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Exec> {
  return new Promise((resolve) => {
    // Own process group, so that a timeout also ends what the peer forked (Python's multiprocessing children).
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => killGroup(child), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: -1, stdout, stderr: stderr + String(e) });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lastLines = (s: string, n = 4) => s.trim().split('\n').slice(-n).join(' | ');
const show = (cmd: string, args: string[], env?: Record<string, string>) => [...Object.entries(env ?? {}).map(([k, v]) => `${k}=${v}`), cmd, ...args].join(' ');

function jsonLine(r: Exec, what: string): Record<string, unknown> {
  const line = r.stdout
    .trim()
    .split('\n')
    .reverse()
    .find((l) => l.startsWith('{'));
  if (r.code !== 0 || !line) throw new PeerError(`${what} exited ${r.code}: ${lastLines(r.stderr || r.stdout)}`);
  return JSON.parse(line) as Record<string, unknown>;
}

// A server and a client on loopback; the server is killed if it outlives the client.
async function clientServer(server: [string, string[]], client: [string, string[]], env?: NodeJS.ProcessEnv, timeoutMs = 120_000) {
  const srv = spawn(server[0], server[1], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let srvOut = '';
  srv.stdout.on('data', (d) => (srvOut += d));
  srv.stderr.on('data', (d) => (srvOut += d));
  await sleep(700);
  const c = await exec(client[0], client[1], { env, timeoutMs });
  const done = new Promise((r) => srv.once('close', r));
  if (srv.exitCode === null) {
    await Promise.race([done, sleep(3000)]);
    if (srv.exitCode === null) killGroup(srv);
  }
  return { client: c, server: srvOut };
}

let port = 47600 + Math.floor(Math.random() * 1000);

const cases: Case[] = [];
const commands = new Map<string, string>();
const add = (c: Case, command: string) => {
  cases.push(c);
  commands.set(c.name, command);
};

// ---- raw libfabric
function raw(name: string, metric: Metric, better: 'max' | 'min', args: string[]) {
  const cmd = join(bin, 'fi_raw_bench');
  add(
    {
      peer: 'raw',
      name,
      metric,
      better,
      run: async () => {
        if (!existsSync(cmd)) throw new PeerError(`${cmd} not built: run benchmarks/peers/build.sh (needs cc, pkg-config, libfabric-dev)`);
        const out = jsonLine(await exec(cmd, args), 'fi_raw_bench');
        if (out.verified === false) throw new PeerError(`fi_raw_bench: data check failed: ${JSON.stringify(out)}`);
        return out;
      },
    },
    show('benchmarks/peers/build/fi_raw_bench', args),
  );
}
const dur = ['--duration', String(duration)];
for (const provider of ['tcp', 'shm']) {
  for (const op of ['write', 'read']) {
    raw(`raw ${provider} ${op.toUpperCase()} 1 MiB d64`, 'gbps', 'max', [
      '--mode',
      'bw',
      '--provider',
      provider,
      '--op',
      op,
      '--block',
      '1048576',
      '--depth',
      '64',
      ...dur,
    ]);
  }
}
raw('raw tcp WRITE 1 MiB d64, no DELIVERY_COMPLETE', 'gbps', 'max', ['--mode', 'bw', '--provider', 'tcp', '--op', 'write', '--no-delivery-complete', ...dur]);
raw('raw tcp WRITE 1 MiB d64, 4 rails', 'gbps', 'max', ['--mode', 'bw', '--provider', 'tcp', '--op', 'write', '--rails', '4', ...dur]);
raw('raw tcp READ 1 MiB d64, 4 rails', 'gbps', 'max', ['--mode', 'bw', '--provider', 'tcp', '--op', 'read', '--rails', '4', ...dur]);
for (const provider of ['tcp', 'shm']) {
  raw(`raw ${provider} READ 4 KiB latency (d1)`, 'p50Us', 'min', [
    '--mode',
    'lat',
    '--provider',
    provider,
    '--op',
    'read',
    '--block',
    '4096',
    '--duration',
    '2',
  ]);
}
for (const provider of ['tcp', 'shm']) {
  for (const op of ['write', 'read']) {
    raw(`raw ${provider} ${op.toUpperCase()} posting 1024 x 4 KiB`, 'postNsPerDesc', 'min', [
      '--mode',
      'post',
      '--provider',
      provider,
      '--op',
      op,
      '--block',
      '4096',
      '--batch',
      '1024',
      '--duration',
      '2',
    ]);
  }
}

// ---- memcpy
add(
  {
    peer: 'memcpy',
    name: 'memcpy 256 MiB, 1 thread',
    metric: 'gbps',
    better: 'max',
    run: async () => {
      const cmd = join(bin, 'memcpy_bench');
      if (!existsSync(cmd)) throw new PeerError(`${cmd} not built: run benchmarks/peers/build.sh`);
      return jsonLine(await exec(cmd, ['--size', String(256 << 20), '--duration', '2']), 'memcpy_bench');
    },
  },
  'benchmarks/peers/build/memcpy_bench --size 268435456 --duration 2',
);

// ---- iperf3
add(
  {
    peer: 'iperf3',
    name: 'iperf3 loopback TCP, 1 stream',
    metric: 'gbps',
    better: 'max',
    run: async () => {
      if (!which('iperf3')) throw new PeerError('iperf3 not installed (Debian: apt-get install -y iperf3)');
      const p = String(port++);
      const { client } = await clientServer(
        ['iperf3', ['-s', '-1', '-B', '127.0.0.1', '-p', p]],
        ['iperf3', ['-c', '127.0.0.1', '-p', p, '-t', String(duration), '-J']],
      );
      if (client.code !== 0) throw new PeerError(`iperf3 exited ${client.code}: ${lastLines(client.stdout + client.stderr)}`);
      const j = JSON.parse(client.stdout) as { end: { sum_received: { bits_per_second: number } } };
      return { gbps: j.end.sum_received.bits_per_second / 8e9 };
    },
  },
  `iperf3 -s -1 -B 127.0.0.1 -p PORT & iperf3 -c 127.0.0.1 -p PORT -t ${duration} -J`,
);

// ---- ucx_perftest
const ucxEnv = { UCX_TLS: 'tcp', UCX_NET_DEVICES: 'lo' };
add(
  {
    peer: 'ucx',
    name: 'ucx_perftest ucp_put_bw tcp 1 MiB',
    metric: 'gbps',
    better: 'max',
    run: async () => {
      if (!which('ucx_perftest')) throw new PeerError('ucx_perftest not installed (Debian: apt-get install -y ucx-utils)');
      const p = String(port++);
      const args = ['-t', 'ucp_put_bw', '-s', '1048576', '-n', '1000', '-w', '50', '-f'];
      const { client } = await clientServer(['ucx_perftest', ['-p', p]], ['ucx_perftest', ['127.0.0.1', '-p', p, ...args]], ucxEnv);
      // Last table row: iterations, lat p50, lat avg, lat overall, bw avg (MB/s = MiB/s), bw overall, msgrate avg, overall
      const row = client.stdout
        .trim()
        .split('\n')
        .reverse()
        .find((l) => /^\s*\d+\s+[\d.]+\s+[\d.]+/.test(l));
      if (client.code !== 0 || !row) throw new PeerError(`ucx_perftest exited ${client.code}: ${lastLines(client.stdout + client.stderr)}`);
      const f = row.trim().split(/\s+/).map(Number);
      return { gbps: (f[5] * 2 ** 20) / 1e9, mibPerSecOverall: f[5], rawRow: row.trim() };
    },
  },
  `${show('ucx_perftest', ['-p', 'PORT'], ucxEnv)} & ${show('ucx_perftest', ['127.0.0.1', '-p', 'PORT', '-t', 'ucp_put_bw', '-s', '1048576', '-n', '1000', '-w', '50', '-f'], ucxEnv)}`,
);

// ---- fi_pingpong
for (const provider of ['tcp', 'shm']) {
  const args = ['-p', provider, '-e', 'rdm', '-S', '1048576', '-I', '300'];
  add(
    {
      peer: 'pingpong',
      name: `fi_pingpong rdm ${provider} 1 MiB`,
      metric: 'gbps',
      better: 'max',
      run: async () => {
        if (!which('fi_pingpong')) throw new PeerError('fi_pingpong not installed (Debian: apt-get install -y libfabric-bin)');
        const p = String(port++);
        const { client } = await clientServer(['fi_pingpong', [...args, '-B', p]], ['fi_pingpong', [...args, '-P', p, '127.0.0.1']]);
        // bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec; MB/sec counts both directions, decimal.
        const row = client.stdout
          .trim()
          .split('\n')
          .reverse()
          .find((l) => /^1m\s/.test(l));
        if (client.code !== 0 || !row) throw new PeerError(`fi_pingpong exited ${client.code}: ${lastLines(client.stdout + client.stderr)}`);
        const f = row.trim().split(/\s+/);
        return { gbps: Number(f[5]) / 1e3, usecPerXfer: Number(f[6]), rawRow: row.trim() };
      },
    },
    `fi_pingpong ${args.join(' ')} -B PORT & fi_pingpong ${args.join(' ')} -P PORT 127.0.0.1`,
  );
}

// ---- Python peers (own venv)
function py(peer: string, name: string, script: string, args: string[], env: Record<string, string> = {}) {
  add(
    {
      peer,
      name,
      metric: 'gbps',
      better: 'max',
      run: async () => {
        if (!existsSync(python)) throw new PeerError(`${python} missing: create the venv as benchmarks/PEERS.md says`);
        const r = await exec(python, [join(here, script), ...args], { env, timeoutMs: 180_000 });
        const out = jsonLine(r, script);
        if (out.verified === false) throw new PeerError(`${script}: data check failed`);
        return out;
      },
    },
    show(`${python} benchmarks/peers/${script}`, args, env),
  );
}
for (const op of ['write', 'read'])
  py('mooncake', `Mooncake TE tcp ${op.toUpperCase()} 1 MiB`, 'mooncake_bench.py', ['--op', op, '--duration', String(duration)]);
// Mooncake's own C++ benchmark, shipped inside the same wheel.
const mcBench = join(dirname(dirname(python)), 'lib', 'python3.11', 'site-packages', 'mooncake', 'transfer_engine_bench');
for (const op of ['write', 'read']) {
  const common = ['--protocol=tcp', '--metadata_server=P2PHANDSHAKE', '--buffer_size=268435456'];
  const init = [
    ...common,
    '--mode=initiator',
    '--local_server_name=127.0.0.1',
    `--operation=${op}`,
    '--block_size=1048576',
    '--batch_size=64',
    '--threads=1',
    `--duration=${Math.max(1, Math.round(duration))}`,
  ];
  add(
    {
      peer: 'mooncake',
      name: `Mooncake transfer_engine_bench tcp ${op.toUpperCase()} 1 MiB`,
      metric: 'gbps',
      better: 'max',
      run: async () => {
        if (!existsSync(mcBench)) throw new PeerError(`${mcBench} missing: install mooncake-transfer-engine-non-cuda into the venv`);
        const tgt = spawn(mcBench, [...common, '--mode=target', `--local_server_name=127.0.0.1:${port++}`], {
          stdio: ['ignore', 'pipe', 'pipe'],
          detached: true,
        });
        try {
          // With P2PHANDSHAKE the target picks its RPC port itself and logs it.
          const rpc = await new Promise<string>((resolve, reject) => {
            let log = '';
            const timer = setTimeout(() => reject(new PeerError(`target never logged its port: ${lastLines(log)}`)), 20_000);
            const onData = (d: Buffer) => {
              log += d;
              const m = /listening on 127\.0\.0\.1:(\d+)/.exec(log);
              if (m) {
                clearTimeout(timer);
                resolve(m[1]);
              }
            };
            tgt.stderr.on('data', onData);
            tgt.stdout.on('data', onData);
          });
          const r = await exec(mcBench, [...init, `--segment_id=127.0.0.1:${rpc}`]);
          const m = /throughput ([\d.]+) GB\/s/.exec(r.stderr + r.stdout);
          if (r.code !== 0 || !m) throw new PeerError(`transfer_engine_bench exited ${r.code}: ${lastLines(r.stderr + r.stdout)}`);
          return { gbps: Number(m[1]) };
        } finally {
          killGroup(tgt);
        }
      },
    },
    `transfer_engine_bench ${common.join(' ')} --mode=target --local_server_name=127.0.0.1:PORT & transfer_engine_bench ${init.join(' ')} --segment_id=127.0.0.1:RPC_PORT_FROM_TARGET_LOG`,
  );
}
for (const op of ['write', 'read'])
  py('nixl', `NIXL UCX(tcp) ${op.toUpperCase()} 1 MiB`, 'nixl_bench.py', ['--op', op, '--duration', String(duration)], ucxEnv);
py('nixl', 'NIXL UCX(default: shm/cma) WRITE 1 MiB', 'nixl_bench.py', ['--op', 'write', '--duration', String(duration)]);
// NIXL's own libfabric plugin: recorded for its reason (the cu12 wheel's plugin needs CUDA and a newer libfabric).
py('nixl', 'NIXL LIBFABRIC(tcp) WRITE 1 MiB', 'nixl_bench.py', ['--op', 'write', '--backend', 'LIBFABRIC', '--duration', String(duration)], {
  FI_PROVIDER: 'tcp',
});

// ---- run
function libfabricVersion(): string {
  const r = spawnSync('pkg-config', ['--modversion', 'libfabric'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : 'unknown';
}

const outcomes: Outcome[] = [];
for (const c of cases) {
  if (only && !only.has(c.peer)) continue;
  const o: Outcome = { peer: c.peer, name: c.name, metric: c.metric, runs: [], command: commands.get(c.name) };
  for (let i = 0; i < repeat; i++) {
    try {
      const d = await c.run();
      const v = d[c.metric] as number;
      o.runs.push(v);
      const better = o.best === undefined || (c.better === 'max' ? v > o.best : v < o.best);
      if (better) {
        o.best = v;
        o.detail = d;
      }
    } catch (e) {
      o.error = e instanceof Error ? e.message : String(e);
      break; // a peer that fails once is not retried: its reason is recorded
    }
  }
  const shown = o.best === undefined ? `UNAVAILABLE: ${o.error}` : `${o.best.toFixed(3)} ${c.metric} (runs ${o.runs.map((r) => r.toFixed(3)).join(', ')})`;
  console.error(`${c.name}: ${shown}`);
  outcomes.push(o);
}

const unit = { gbps: 'GB/s', p50Us: 'µs p50', postNsPerDesc: 'ns/desc' } as const;
console.log(`\npeers on ${hostname()} (${cpus().length} × ${cpus()[0]?.model}), best of ${repeat}:`);
console.table(
  outcomes.map((o) => ({
    peer: o.name,
    best: o.best === undefined ? 'n/a' : `${o.best.toFixed(o.metric === 'postNsPerDesc' ? 0 : 3)} ${unit[o.metric]}`,
    runs: o.runs.map((r) => +r.toFixed(3)).join(' / '),
    note: (o.error ?? '').slice(0, 100),
  })),
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(
  values.out!,
  JSON.stringify(
    {
      benchmark: 'peers',
      date: new Date().toISOString(),
      repeat,
      machine: {
        cpu: cpus()[0]?.model,
        cores: cpus().length,
        memoryGiB: Math.round(totalmem() / 2 ** 30),
        kernel: release(),
        libfabric: libfabricVersion(),
        node: process.version,
      },
      outcomes,
    },
    null,
    2,
  ),
);
console.log(`wrote ${values.out}`);
