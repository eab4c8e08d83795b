// `kvfabric doctor`, each check against an environment the test builds for real: environment variables,
// temp directories standing in for /dev, /proc and /sys (device nodes, sysfs entries, driver symlinks,
// limits files), `ulimit -l` in the shell that starts the CLI, capabilities dropped with setpriv, and the
// real libfabric opened the way a worker opens it. No fabric is mocked.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, test } from 'node:test';

import { renderTable, runDoctor, type CheckResult, type DoctorOptions, type DoctorReport } from '../src/doctor/index.js';
import type { CudaProbe } from '../src/doctor/types.js';
import { CLI } from './helpers/serve.js';

/** A directory tree: 'file' → contents, 'dir/' → empty directory, '->target' → symlink. */
function tree(spec: Record<string, string> = {}): string {
  const root = mkdtempSync(join(tmpdir(), 'kvf-doctor-'));
  for (const [path, value] of Object.entries(spec)) {
    const full = join(root, path);
    if (path.endsWith('/')) mkdirSync(full, { recursive: true });
    else {
      mkdirSync(dirname(full), { recursive: true });
      if (value.startsWith('->')) symlinkSync(value.slice(2), full);
      else writeFileSync(full, value);
    }
  }
  return root;
}

const EFA_NODE = { 'sys/class/infiniband/rdmap16s27/': '', 'dev/infiniband/uverbs0': '' };
const noPath = tree();

async function group(name: string, env: NodeJS.ProcessEnv, options: DoctorOptions = {}): Promise<CheckResult[]> {
  const report = await runDoctor({ env: { PATH: noPath, ...env }, root: tree(), openAgent: false, ...options });
  return report.checks.filter((c) => c.group === name);
}
const row = (rows: CheckResult[], name: string): CheckResult => {
  const r = rows.find((c) => c.name === name);
  assert.ok(r, `row ${name} in ${JSON.stringify(rows)}`);
  return r;
};

const capEff = BigInt(`0x${readFileSync('/proc/self/status', 'utf8').match(/^CapEff:\s*([0-9a-f]+)/m)![1]}`);
const HAVE_IPC_LOCK = ((capEff >> 14n) & 1n) === 1n;
/** Raising the hard limit needs CAP_SYS_RESOURCE, which containers often lack even as root. */
const CAN_UNLIMIT = (() => {
  try {
    execFileSync('bash', ['-c', 'ulimit -l unlimited'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

interface CliRun {
  code: number;
  report: DoctorReport;
  stdout: string;
  stderr: string;
}

/**
 * `kvfabric doctor <args>` from a bash that first runs `pre` (ulimit, …). With `dropIpcLock` the CLI runs
 * without CAP_IPC_LOCK: setpriv drops it from the bounding set when we have it (root), else nothing to drop.
 */
function cli(pre: string, env: NodeJS.ProcessEnv, args: string[], dropIpcLock = false): Promise<CliRun> {
  const drop = dropIpcLock && HAVE_IPC_LOCK ? 'setpriv --inh-caps=-all --bounding-set=-ipc_lock ' : '';
  const cmd = `${pre}; exec ${drop}${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} doctor ${args.join(' ')}`;
  return new Promise((resolve) => {
    execFile('bash', ['-c', cmd], { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? Number((err as { code?: number }).code ?? 1) : 0;
      resolve({ code, stdout, stderr, report: args.includes('--json') ? (JSON.parse(stdout) as DoctorReport) : { ok: code === 0, checks: [] } });
    });
  });
}

describe('doctor: efa devices', () => {
  test('an EFA node: sysfs device and /dev/infiniband/uverbs0', async () => {
    const rows = (await runDoctor({ env: { PATH: noPath, FI_PROVIDER: 'efa' }, root: tree(EFA_NODE), openAgent: false })).checks.filter(
      (c) => c.group === 'efa',
    );
    assert.deepEqual(
      rows.map((r) => [r.name, r.status]),
      [
        ['EFA devices', 'ok'],
        ['/dev/infiniband', 'ok'],
      ],
    );
    assert.match(row(rows, 'EFA devices').detail, /rdmap16s27/);
  });

  test('efa asked for on a node without EFA: both fail, with the pod settings as the fix', async () => {
    const rows = await group('efa', { FI_PROVIDER: 'efa' });
    assert.deepEqual(
      rows.map((r) => r.status),
      ['fail', 'fail'],
    );
    assert.match(row(rows, '/dev/infiniband').fix!, /vpc\.amazonaws\.com\/efa/);
  });

  test('devices on the host but not in the container: /dev/infiniband fails even with automatic choice', async () => {
    const root = tree({ 'sys/class/infiniband/rdmap16s27/': '', 'dev/': '' });
    const rows = (await runDoctor({ env: { PATH: noPath }, root, openAgent: false })).checks.filter((c) => c.group === 'efa');
    assert.equal(row(rows, '/dev/infiniband').status, 'fail');
  });

  test('the driver symlink decides for devices not named rdmap*; tcp needs no device', async () => {
    const root = tree({
      'sys/bus/pci/drivers/efa/': '',
      'sys/bus/pci/drivers/mlx5_core/': '',
      'sys/class/infiniband/efa_0/device/driver': '->../../../../bus/pci/drivers/efa',
      'sys/class/infiniband/mlx5_0/device/driver': '->../../../../bus/pci/drivers/mlx5_core',
    });
    const rows = (await runDoctor({ env: { PATH: noPath, FI_PROVIDER: 'efa' }, root, openAgent: false })).checks.filter((c) => c.group === 'efa');
    assert.equal(row(rows, 'EFA devices').detail, '1: efa_0');
    assert.deepEqual(
      (await group('efa', { FI_PROVIDER: 'tcp' })).map((r) => r.status),
      ['skip', 'skip'],
    );
  });
});

describe('doctor: providers (real libfabric)', { concurrency: true }, () => {
  test('tcp: the agent opens as a worker would, and fi_info lists the providers', async () => {
    const { code, report } = await cli('true', { FI_PROVIDER: 'tcp' }, ['--json', '--root', tree()]);
    const rows = report.checks.filter((c) => c.group === 'providers');
    assert.equal(row(rows, 'selected provider').status, 'ok');
    assert.match(row(rows, 'selected provider').detail, /backend LIBFABRIC, provider tcp;ofi_rxm/);
    assert.match(row(rows, 'providers').detail, /\btcp\b/);
    assert.equal(code, report.ok ? 0 : 1);
  });

  test('efa on a node without it: the agent fails with its code, fi_info lacks efa, exit 1, the table says how to fix', async () => {
    const { code, report } = await cli('true', { FI_PROVIDER: 'efa' }, ['--json', '--root', tree()]);
    const rows = report.checks.filter((c) => c.group === 'providers');
    assert.equal(code, 1);
    assert.equal(row(rows, 'selected provider').status, 'fail');
    assert.match(row(rows, 'selected provider').detail, /KVF_ERR_PROVIDER_UNAVAILABLE/);
    assert.match(row(rows, 'KVF_LIBFABRIC').fix!, /\/opt\/amazon\/efa\/lib\/libfabric\.so\.1/);
    const table = await cli('true', { FI_PROVIDER: 'efa' }, ['--root', tree()]);
    assert.equal(table.code, 1);
    assert.match(table.stdout, /^FAIL\s+providers\s+selected provider\s+KVF_ERR_PROVIDER_UNAVAILABLE/m);
    assert.match(table.stdout, /fix: /);
    assert.match(table.stdout, /^FAILED: \d+ ok, \d+ warning\(s\), [1-9]\d* failure\(s\)/m);
  });

  test('EFA devices present but the automatic choice falls back to tcp: the silent fallback is a failure', async () => {
    const { report } = await cli('true', {}, ['--json', '--root', tree(EFA_NODE)]);
    const r = row(
      report.checks.filter((c) => c.group === 'providers'),
      'selected provider',
    );
    assert.equal(r.status, 'fail');
    assert.match(r.detail, /fell back to tcp;ofi_rxm/);
  });

  test('KVF_LIBFABRIC naming a missing library fails twice: the file, and the agent that cannot load it', async () => {
    const { report } = await cli('true', { FI_PROVIDER: 'tcp', KVF_LIBFABRIC: '/nonexistent/libfabric.so.1' }, ['--json', '--root', tree()]);
    const rows = report.checks.filter((c) => c.group === 'providers');
    assert.equal(row(rows, 'KVF_LIBFABRIC').status, 'fail');
    assert.match(row(rows, 'selected provider').detail, /cannot load libfabric \(\/nonexistent\/libfabric\.so\.1\)/);
  });

  test('without fi_info on PATH: a warning, not a crash', async () => {
    const rows = await group('providers', { FI_PROVIDER: 'tcp' });
    assert.equal(row(rows, 'fi_info').status, 'warn');
  });
});

describe('doctor: FI_* variables', () => {
  test("the seed's FI_EFA_ENABLE_SHM is not libfabric's name: warn, with the real one as the fix", async () => {
    const r = row(await group('fi-env', { FI_EFA_ENABLE_SHM: '0' }), 'FI_EFA_ENABLE_SHM');
    assert.equal(r.status, 'warn');
    assert.equal(r.fix, 'use FI_EFA_ENABLE_SHM_TRANSFER=0 instead');
  });

  test('FI_HMEM_DISABLE_P2P=1 fails on a GPU node (GPUDirect off) and warns elsewhere', async () => {
    const gpuRoot = tree({ 'dev/nvidia0': '', 'dev/nvidiactl': '' });
    const onGpu = (await runDoctor({ env: { PATH: noPath, FI_HMEM_DISABLE_P2P: '1' }, root: gpuRoot, openAgent: false })).checks;
    assert.equal(
      row(
        onGpu.filter((c) => c.group === 'fi-env'),
        'FI_HMEM_DISABLE_P2P',
      ).status,
      'fail',
    );
    assert.match(row(onGpu, 'FI_HMEM_DISABLE_P2P').detail, /GPUDirect/);
    assert.equal(row(await group('fi-env', { FI_HMEM_DISABLE_P2P: 'yes' }), 'FI_HMEM_DISABLE_P2P').status, 'warn');
    assert.equal(row(await group('fi-env', { FI_HMEM_DISABLE_P2P: '0' }), 'FI_HMEM_DISABLE_P2P').status, 'ok');
  });

  test('FI_EFA_USE_DEVICE_RDMA with efa: unset or 0 warns, 1 is ok, garbage fails', async () => {
    const status = async (v?: string) =>
      row(await group('fi-env', { FI_PROVIDER: 'efa', ...(v === undefined ? {} : { FI_EFA_USE_DEVICE_RDMA: v }) }), 'FI_EFA_USE_DEVICE_RDMA').status;
    assert.deepEqual([await status(), await status('0'), await status('1'), await status('maybe')], ['warn', 'warn', 'ok', 'fail']);
  });

  test('FI_MR_CACHE_MAX_COUNT with efa: anything but 0 warns (a cached registration outlives a revoked grant); not checked without efa', async () => {
    const status = async (v?: string, provider = 'efa') =>
      row(await group('fi-env', { FI_PROVIDER: provider, ...(v === undefined ? {} : { FI_MR_CACHE_MAX_COUNT: v }) }), 'FI_MR_CACHE_MAX_COUNT')?.status;
    assert.deepEqual([await status(), await status('1024'), await status('0')], ['warn', 'warn', 'ok']);
    assert.equal(
      (await group('fi-env', { FI_PROVIDER: 'tcp' })).find((r) => r.name === 'FI_MR_CACHE_MAX_COUNT'),
      undefined,
    );
  });

  test('typos, bad numbers and bad monitors; names the loaded libfabric reports (fi_info -e) are known', async () => {
    const rows = await group('fi-env', { FI_EFA_TXSIZE: '8192', FI_EFA_TX_SIZE: 'lots', FI_MR_CACHE_MONITOR: 'off', KVF_BLOKS: '64' });
    assert.deepEqual(rows.map((r) => [r.name, r.status]).sort(), [
      ['FI_EFA_TXSIZE', 'warn'],
      ['FI_EFA_TX_SIZE', 'fail'],
      ['FI_MR_CACHE_MONITOR', 'fail'],
      ['KVF_BLOKS', 'warn'],
    ]);
    // Every config key's variable is kvfabric's own, also those only the README documents.
    const documented = { KVF_BUSY_POLL_US: '500', KVF_ENGINE_ISA: 'scalar', KVF_MAX_MIGRATIONS: '1', KVF_KEEPALIVE_MS: '500' };
    assert.deepEqual(
      (await group('fi-env', documented)).map((r) => [r.name, r.status]),
      [['FI_* variables', 'ok']],
    );
    // FI_FORK_UNSAFE is on no static list: only libfabric itself (fi_info -e, on the real PATH) knows it.
    assert.equal((await group('fi-env', { FI_FORK_UNSAFE: '1' })).find((r) => r.name === 'FI_FORK_UNSAFE')?.status, 'warn');
    const withLib = await group('fi-env', { FI_FORK_UNSAFE: '1', PATH: process.env.PATH });
    assert.deepEqual(
      withLib.map((r) => r.status),
      ['ok'],
    );
  });
});

describe('doctor: memlock (ulimit -l in the shell that starts the CLI)', { concurrency: true }, () => {
  test('efa with ulimit -l 64 and no CAP_IPC_LOCK: fail, exit 1', async () => {
    const { code, report } = await cli('ulimit -l 64', { FI_PROVIDER: 'efa' }, ['--json', '--no-agent'], true);
    const r = row(report.checks, 'locked memory');
    assert.equal(r.status, 'fail');
    assert.match(r.detail, /65536 bytes \(ulimit -l 64\) without CAP_IPC_LOCK/);
    assert.match(r.fix!, /IPC_LOCK/);
    assert.equal(code, 1);
  });

  test('tcp with ulimit -l 64: only a warning (tcp does not pin)', async () => {
    const { report } = await cli('ulimit -l 64', { FI_PROVIDER: 'tcp' }, ['--json', '--no-agent'], true);
    assert.equal(row(report.checks, 'locked memory').status, 'warn');
  });

  test("CAP_IPC_LOCK lifts the limit (the seed's securityContext), and unlimited is fine", { skip: !HAVE_IPC_LOCK && 'needs CAP_IPC_LOCK' }, async () => {
    const { report } = await cli('ulimit -l 64', { FI_PROVIDER: 'efa' }, ['--json', '--no-agent']);
    const r = row(report.checks, 'locked memory');
    assert.equal(r.status, 'ok');
    assert.match(r.detail, /CAP_IPC_LOCK lifts it/);
    if (CAN_UNLIMIT) {
      const unlimited = await cli('ulimit -l unlimited', { FI_PROVIDER: 'efa' }, ['--json', '--no-agent'], true);
      assert.deepEqual([row(unlimited.report.checks, 'locked memory').status, row(unlimited.report.checks, 'locked memory').detail], ['ok', 'unlimited']);
    }
  });

  test('limits and capabilities read from a /proc stand-in', async () => {
    const proc = (limit: string, cap: string) =>
      tree({
        'proc/self/limits': `Limit                     Soft Limit           Hard Limit           Units\nMax locked memory         ${limit}            ${limit}            bytes\n`,
        'proc/self/status': `Name:\tnode\nCapEff:\t${cap}\n`,
      });
    const memlock = async (root: string) =>
      row((await runDoctor({ env: { PATH: noPath, FI_PROVIDER: 'efa' }, root, openAgent: false })).checks, 'locked memory');
    assert.equal((await memlock(proc('unlimited', '0000000000000000'))).status, 'ok');
    assert.equal((await memlock(proc('8388608', '0000000000004000'))).status, 'ok'); // bit 14: CAP_IPC_LOCK
    assert.equal((await memlock(proc('8388608', '000001ffffffbfff'))).status, 'fail'); // everything but IPC_LOCK
    assert.equal((await memlock(tree())).status, 'warn'); // unreadable
  });
});

describe('doctor: hugepages (sysfs and /proc/meminfo stand-ins)', () => {
  const pool = (total: number, free: number) =>
    tree({ 'sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages': `${total}\n`, 'sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages': `${free}\n` });
  const hp = async (root: string, env: NodeJS.ProcessEnv = {}) =>
    row((await runDoctor({ env: { PATH: noPath, ...env }, root, openAgent: false })).checks, 'hugepages-2Mi');

  test("the seed's 5120Mi reserved: ok", async () => {
    const r = await hp(pool(2560, 2560), { KVF_HUGEPAGES: 'true', FI_PROVIDER: 'efa' });
    assert.deepEqual([r.status, r.detail], ['ok', '2560 free of 2560 (5120 MiB free)']);
  });

  test('KVF_HUGEPAGES on with none free: fail; efa with none: warn; tcp with none: ok', async () => {
    assert.equal((await hp(pool(0, 0), { KVF_HUGEPAGES: 'true' })).status, 'fail');
    assert.equal((await hp(pool(16, 0), { FI_PROVIDER: 'efa' })).status, 'warn');
    assert.equal((await hp(pool(0, 0), { FI_PROVIDER: 'tcp' })).status, 'ok');
  });

  test('/proc/meminfo alone when sysfs lacks the pool; neither: warn', async () => {
    const meminfo = tree({ 'proc/meminfo': 'MemTotal:  1000 kB\nHugePages_Total:     8\nHugePages_Free:      6\nHugepagesize:       2048 kB\n' });
    assert.equal((await hp(meminfo)).detail, '6 free of 8 (12 MiB free)');
    assert.equal((await hp(tree())).status, 'warn');
  });
});

describe('doctor: NIXL', () => {
  test("NIXL_BACKEND: LIBFABRIC or unset is ok, UCX fails with the fabric's own message", async () => {
    assert.equal(row(await group('nixl', { NIXL_BACKEND: 'LIBFABRIC' }), 'NIXL_BACKEND').status, 'ok');
    const ucx = row(await group('nixl', { NIXL_BACKEND: 'UCX' }), 'NIXL_BACKEND');
    assert.equal(ucx.status, 'fail');
    assert.match(ucx.detail, /NIXL_BACKEND=UCX is not supported/);
  });

  test("the seed's plugin path: present ok, NIXL without it warns, a wrong NIXL_PLUGIN_DIR fails, no NIXL skips", async () => {
    const plugins = 'opt/nvidia/nvda_nixl/lib/x86_64-linux-gnu/plugins';
    const status = async (root: string, env: NodeJS.ProcessEnv = {}) =>
      row((await runDoctor({ env: { PATH: noPath, ...env }, root, openAgent: false })).checks, 'libplugin_LIBFABRIC.so').status;
    assert.equal(await status(tree({ [`${plugins}/libplugin_LIBFABRIC.so`]: '' })), 'ok');
    assert.equal(await status(tree({ [`${plugins}/libplugin_UCX.so`]: '' })), 'warn');
    assert.equal(await status(tree(), { NIXL_PLUGIN_DIR: tree() }), 'fail');
    assert.equal(await status(tree(), { NIXL_PLUGIN_DIR: join(tree({ 'p/libplugin_LIBFABRIC.so': '' }), 'p') }), 'ok');
    assert.equal(await status(tree()), 'skip');
  });
});

describe('doctor: GPUs (/dev stand-in)', () => {
  test('device nodes are counted; none: skip; with efa, GPUDirect needs nvidia_peermem', async () => {
    const gpus = async (spec: Record<string, string>, env: NodeJS.ProcessEnv = {}) =>
      (await runDoctor({ env: { PATH: noPath, ...env }, root: tree(spec), openAgent: false })).checks.filter((c) => c.group === 'gpu');
    const two = await gpus({ 'dev/nvidia0': '', 'dev/nvidia1': '', 'dev/nvidiactl': '', 'dev/nvidia-uvm': '' });
    assert.deepEqual(
      two.map((r) => [r.name, r.status]),
      [['GPUs', 'ok']],
    );
    assert.match(row(two, 'GPUs').detail, /^2: nvidia0, nvidia1/);
    assert.deepEqual(
      (await gpus({})).map((r) => r.status),
      ['skip'],
    );
    assert.equal(row(await gpus({ 'dev/nvidia0': '' }, { FI_PROVIDER: 'efa' }), 'GPUDirect RDMA').status, 'warn');
    assert.equal(row(await gpus({ 'dev/nvidia0': '', 'sys/module/nvidia_peermem/': '' }, { FI_PROVIDER: 'efa' }), 'GPUDirect RDMA').status, 'ok');
  });
});

describe('doctor: the CUDA driver and FI_HMEM', () => {
  const h100 = { index: 0, name: 'NVIDIA H100 80GB HBM3', totalMemory: 85_045_542_912, pciBusId: '00000000:3B:00.0' };
  const probe = (status: ReturnType<CudaProbe['status']>, hmem: ReturnType<CudaProbe['hmem']> = { hmem: false, error: 'No data available' }): CudaProbe => ({
    status: () => status,
    hmem: () => hmem,
  });
  const gpuRows = async (spec: Record<string, string>, cuda: CudaProbe | undefined, env: NodeJS.ProcessEnv = {}) =>
    (await runDoctor({ env: { PATH: noPath, ...env }, root: tree(spec), openAgent: false, ...(cuda ? { cuda } : {}) })).checks.filter((c) => c.group === 'gpu');

  test('no driver: skip without device nodes, warn with them', async () => {
    const none = probe({ available: false, reason: 'no CUDA driver: libcuda.so.1: cannot open shared object file', devices: [] });
    const bare = await gpuRows({}, none);
    assert.deepEqual(
      bare.map((r) => [r.name, r.status]),
      [
        ['GPUs', 'skip'],
        ['CUDA driver', 'skip'],
      ],
    );
    assert.match(row(bare, 'CUDA driver').detail, /libcuda\.so\.1.*KVF_ERR_NO_GPU/);
    const nodes = await gpuRows({ 'dev/nvidia0': '' }, none);
    assert.equal(row(nodes, 'CUDA driver').status, 'warn');
    assert.match(row(nodes, 'CUDA driver').fix ?? '', /KVF_LIBCUDA/);
  });

  test('a driver: version and devices; FI_HMEM with CUDA ok, without CUDA or absent staged (warn on efa)', async () => {
    const noCudaLib = tree({ 'lib/libfabric.so.1': 'a libfabric without hmem_cuda' });
    const cudaLib = tree({ 'lib/libfabric.so.1': 'x\0cuPointerGetAttribute\0libcuda.so.1\0' });
    const card = { available: true, driverVersion: 13000, devices: [h100] };
    const ok = await gpuRows({ 'dev/nvidia0': '' }, probe(card, { hmem: true, library: join(cudaLib, 'lib/libfabric.so.1') }));
    assert.deepEqual(
      ok.map((r) => [r.name, r.status]),
      [
        ['GPUs', 'ok'],
        ['CUDA driver', 'ok'],
        ['FI_HMEM', 'ok'],
      ],
    );
    assert.match(row(ok, 'CUDA driver').detail, /^CUDA 13\.0, 1 device\(s\): cuda:0 NVIDIA H100 80GB HBM3 \(79\.2 GiB, 00000000:3B:00\.0\)/);
    assert.match(row(ok, 'FI_HMEM').detail, /tcp;ofi_rxm offers FI_HMEM .*built with CUDA/);
    // FI_HMEM from a libfabric built without CUDA (host memory only): staged; a warning only where efa is meant.
    const hostOnly = { hmem: true, library: join(noCudaLib, 'lib/libfabric.so.1') };
    assert.equal(row(await gpuRows({ 'dev/nvidia0': '' }, probe(card, hostOnly), { FI_PROVIDER: 'shm' }), 'FI_HMEM').status, 'skip');
    const efaHostOnly = row(await gpuRows({ 'dev/nvidia0': '' }, probe(card, hostOnly), { FI_PROVIDER: 'efa' }), 'FI_HMEM');
    assert.equal(efaHostOnly.status, 'warn');
    assert.match(efaHostOnly.detail, /no CUDA support.*staged/);
    assert.match(efaHostOnly.fix ?? '', /KVF_LIBFABRIC=/);
    // No FI_HMEM at all.
    const absent = row(await gpuRows({ 'dev/nvidia0': '' }, probe(card), { FI_PROVIDER: 'efa' }), 'FI_HMEM');
    assert.equal(absent.status, 'warn');
    assert.match(absent.detail, /efa offers no FI_HMEM .*No data available.*staged/);
    assert.equal(row(await gpuRows({ 'dev/nvidia0': '' }, probe(card), { FI_PROVIDER: 'tcp' }), 'FI_HMEM').status, 'skip');
    // GPUDirect RDMA is still checked with efa.
    assert.equal(row(await gpuRows({ 'dev/nvidia0': '' }, probe(card), { FI_PROVIDER: 'efa' }), 'GPUDirect RDMA').status, 'warn');
  });

  test('the real addon: the CUDA driver row says what this host has', async () => {
    const { gpuAddon } = await import('../src/fabric/gpu-native.js');
    const real: CudaProbe = { status: () => gpuAddon.cudaStatus(), hmem: (p) => gpuAddon.libfabricHmem(p) };
    const rows = await gpuRows({}, real, { FI_PROVIDER: 'tcp' });
    const driver = row(rows, 'CUDA driver');
    const s = gpuAddon.cudaStatus();
    if (s.available) assert.equal(driver.status, 'ok');
    else assert.ok(driver.detail.startsWith(s.reason ?? '?'), driver.detail);
  });
});

describe('doctor: report and table', () => {
  test('ok is false exactly when a check fails, not on warnings (the real report)', async () => {
    const doctor = (env: NodeJS.ProcessEnv) => runDoctor({ env: { PATH: noPath, ...env }, root: tree(), openAgent: false });
    // A typo warns; a value libfabric cannot parse fails.
    const warned = await doctor({ FI_EFA_TXSIZE: '8192' });
    const failed = await doctor({ FI_EFA_TXSIZE: '8192', FI_EFA_TX_SIZE: 'lots' });
    assert.ok(warned.checks.some((c) => c.status === 'warn'));
    assert.deepEqual(
      warned.checks.filter((c) => c.status === 'fail'),
      [],
    );
    assert.equal(warned.ok, true);
    assert.deepEqual(
      failed.checks.filter((c) => c.status === 'fail').map((c) => c.name),
      ['FI_EFA_TX_SIZE'],
    );
    assert.equal(failed.ok, false);
    assert.match(renderTable(failed, 100), /^FAILED: /m);
    assert.doesNotMatch(renderTable(warned, 100), /^FAILED: /m);
  });

  test('the table marks rows and prints fixes for warn/fail only', () => {
    const report: DoctorReport = {
      ok: false,
      checks: [
        { group: 'efa', name: 'EFA devices', status: 'fail', detail: 'none', fix: 'request vpc.amazonaws.com/efa' },
        { group: 'gpu', name: 'GPUs', status: 'skip', detail: 'none', fix: 'not shown' },
        { group: 'memlock', name: 'locked memory', status: 'ok', detail: 'unlimited' },
      ],
    };
    const table = renderTable(report, 100);
    assert.match(table, /^FAIL\s+efa\s+EFA devices\s+none\n\s+fix: request vpc\.amazonaws\.com\/efa$/m);
    assert.doesNotMatch(table, /not shown/);
    assert.match(table, /^--\s+gpu/m);
    assert.match(table, /FAILED: 1 ok, 0 warning\(s\), 1 failure\(s\), 1 not applicable$/);
  });
});
