import assert from 'node:assert/strict';
import { test } from 'node:test';

import { checkReachable, decodeEndpoint, defaultRouteInterface, formatEndpoint, routableAddress } from '../src/fabric/address.js';
import { requestedProvider, resolveBackend, tcpBinding, providerStack } from '../src/fabric/config.js';
import { loopbackWarning, workerFabricAddress } from '../src/serve/fabric-address.js';
import { KvfError } from '../src/common/errors.js';

test('NIXL_BACKEND: unset and LIBFABRIC select kvfabric, anything else is a clear error', () => {
  assert.equal(resolveBackend(undefined, {}), 'LIBFABRIC');
  assert.equal(resolveBackend(undefined, { NIXL_BACKEND: 'LIBFABRIC' }), 'LIBFABRIC');
  assert.equal(resolveBackend(undefined, { NIXL_BACKEND: 'libfabric' }), 'LIBFABRIC');
  for (const value of ['UCX', 'MOONCAKE', 'GDS']) {
    assert.throws(
      () => resolveBackend(undefined, { NIXL_BACKEND: value }),
      (err: KvfError) =>
        err instanceof KvfError &&
        err.code === 'KVF_ERR_BACKEND_UNSUPPORTED' &&
        err.message.includes(`NIXL_BACKEND=${value}`) &&
        err.message.includes('LIBFABRIC'),
    );
  }
  assert.throws(() => resolveBackend('UCX', { NIXL_BACKEND: 'LIBFABRIC' }), /backend option=UCX/);
});

test('provider: option, then FI_PROVIDER (first of a list; exclusions mean no preference)', () => {
  assert.equal(requestedProvider('tcp', { FI_PROVIDER: 'shm' }), 'tcp;ofi_rxm');
  assert.equal(requestedProvider(undefined, { FI_PROVIDER: 'shm' }), 'shm');
  assert.equal(requestedProvider(undefined, { FI_PROVIDER: 'efa,tcp' }), 'efa');
  assert.equal(requestedProvider(undefined, { FI_PROVIDER: '^psm2' }), undefined);
  assert.equal(requestedProvider(undefined, {}), undefined);
  assert.equal(providerStack('verbs'), 'verbs;ofi_rxm');
  assert.equal(providerStack('tcp;ofi_rxm'), 'tcp;ofi_rxm');
});

test('tcp binds the configured address or interface, else the routable one, else loopback', () => {
  const none = (): undefined => undefined;
  assert.deepEqual(tcpBinding(undefined, undefined, {}, none), { node: '127.0.0.1' });
  assert.deepEqual(
    tcpBinding(undefined, undefined, {}, () => '10.77.0.2'),
    { node: '10.77.0.2' },
  );
  assert.deepEqual(tcpBinding(undefined, undefined, { FI_TCP_IFACE: 'eth0' }), { domain: 'eth0' });
  assert.deepEqual(tcpBinding(undefined, undefined, { KVF_ADDRESS: '10.0.0.5' }), { node: '10.0.0.5' });
  assert.deepEqual(tcpBinding('10.1.1.1', 'eth1', {}), { node: '10.1.1.1', domain: 'eth1' });
});

test("the routable address is the default route's interface, else the first non-loopback IPv4", () => {
  const table =
    'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n' +
    'eth1\t00000000\t0101A8C0\t0003\t0\t0\t200\t00000000\n' +
    'eth0\t00000000\t01004D0A\t0003\t0\t0\t100\t00000000\n' +
    'eth0\t00004D0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n';
  assert.equal(defaultRouteInterface(table), 'eth0');
  const nic = (address: string, internal = false) => ({ address, family: 'IPv4', internal }) as never;
  const ifaces = () => ({ lo: [nic('127.0.0.1', true)], eth1: [nic('192.168.1.5')], eth0: [nic('10.77.0.2')] });
  assert.equal(
    routableAddress(() => table, ifaces),
    '10.77.0.2',
  );
  assert.equal(
    routableAddress(() => '', ifaces),
    '192.168.1.5',
  );
  assert.equal(
    routableAddress(
      () => '',
      () => ({ lo: [nic('127.0.0.1', true)] }),
    ),
    undefined,
  );
});

test("a worker's fabric address follows its listen / advertise address unless configured", () => {
  assert.deepEqual(workerFabricAddress({ listen: '127.0.0.1:0' }, {}).address, '127.0.0.1');
  assert.deepEqual(workerFabricAddress({ listen: 'localhost:0' }, {}).address, '127.0.0.1');
  assert.deepEqual(workerFabricAddress({ listen: '10.77.0.3:0', advertise: '10.9.9.9:1' }, {}).address, '10.77.0.3');
  assert.deepEqual(workerFabricAddress({ listen: '0.0.0.0:50051', advertise: '10.1.2.3:50051' }, {}).address, '10.1.2.3');
  assert.deepEqual(workerFabricAddress({ listen: '0.0.0.0:50051', advertise: 'prefill.svc:50051' }, {}).address, undefined);
  assert.deepEqual(workerFabricAddress({ listen: '0.0.0.0:1', fabricAddress: '10.0.0.9' }, {}).address, '10.0.0.9');
  assert.deepEqual(workerFabricAddress({ listen: '127.0.0.1:1' }, { KVF_ADDRESS: '10.0.0.8' }), { address: undefined, source: 'KVF_ADDRESS' });
  assert.match(loopbackWarning(['127.0.0.1:4000'], '10.1.2.3:50051')!, /loopback while the advertised gRPC address 10\.1\.2\.3:50051/);
  assert.equal(loopbackWarning(['127.0.0.1:4000'], '127.0.0.1:50051'), undefined);
  assert.equal(loopbackWarning(['10.1.2.3:4000'], '10.1.2.3:50051'), undefined);
});

test('sockaddrs in metadata decode; a loopback peer elsewhere is refused at load with KVF_ERR_PEER_UNREACHABLE', () => {
  const sin = (ip: string, port: number): Uint8Array => {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(2, 0);
    b.writeUInt16BE(port, 2);
    ip.split('.').forEach((o, i) => b.writeUInt8(Number(o), 4 + i));
    return b;
  };
  const six = Buffer.alloc(28);
  six.writeUInt16LE(10, 0);
  six.writeUInt16BE(443, 2);
  six.writeUInt16BE(1, 22);
  assert.deepEqual(decodeEndpoint(sin('10.77.0.2', 39181)), { ip: '10.77.0.2', port: 39181 });
  assert.equal(formatEndpoint(decodeEndpoint(six)!), '[::1]:443');
  assert.equal(decodeEndpoint(Buffer.from('fi_shm://x\0')), undefined);
  const check = (own: string, peer: string, ownHost: string, peerHost: string) => () =>
    checkReachable({ own: [sin(own, 1)], peer: [sin(peer, 2)], peerName: 'p', ownHost, peerHost });
  // Another pid namespace on this kernel, this agent routable: the peer's 127.0.0.1 is not ours.
  assert.throws(
    check('10.77.0.3', '127.0.0.1', 'boot/pid:[1]', 'boot/pid:[2]'),
    (e: KvfError) => e.code === 'KVF_ERR_PEER_UNREACHABLE' && /127\.0\.0\.1:2/.test(e.message),
  );
  // Another kernel: loopback cannot reach it whatever this agent binds.
  assert.throws(check('127.0.0.1', '127.0.0.1', 'bootA/pid:[1]', 'bootB/pid:[1]'), /another host/);
  // Same host, or both on loopback of one kernel (containers of one pod), or a routable peer: allowed.
  check('10.77.0.3', '127.0.0.1', 'boot/pid:[1]', 'boot/pid:[1]')();
  check('127.0.0.1', '127.0.0.1', 'boot/pid:[1]', 'boot/pid:[2]')();
  check('10.77.0.3', '10.77.0.2', 'bootA/pid:[1]', 'bootB/pid:[1]')();
});

test('worker busyPollUs: from --busy-poll-us or KVF_BUSY_POLL_US, checked', async () => {
  const { workerConfig } = await import('../src/serve/config.js');
  assert.equal(workerConfig({ flags: { role: 'prefill' }, env: { KVF_BUSY_POLL_US: '500' } }).busyPollUs, 500);
  assert.equal(workerConfig({ flags: { role: 'decode', busyPollUs: '0' }, env: {} }).busyPollUs, 0);
  assert.equal(workerConfig({ flags: { role: 'decode' }, env: {} }).busyPollUs, undefined);
  assert.throws(() => workerConfig({ flags: { role: 'prefill' }, env: { KVF_BUSY_POLL_US: '-1' } }), { code: 'KVF_ERR_BAD_CONFIG' });
  // Continuous batching limits: defaults, flags, and nothing below one.
  const batching = workerConfig({ flags: { role: 'decode' }, env: {} });
  assert.deepEqual([batching.maxBatchSequences, batching.maxStepTokens], [32, 256]);
  const set = workerConfig({ flags: { role: 'decode', maxBatchSequences: '4', maxStepTokens: '64' }, env: {} });
  assert.deepEqual([set.maxBatchSequences, set.maxStepTokens], [4, 64]);
  assert.throws(() => workerConfig({ flags: { role: 'decode', maxStepTokens: '0' }, env: {} }), { code: 'KVF_ERR_BAD_CONFIG' });
});

test('flags come from the config schema: every key but NO_FLAG has one, and the established names stay', async () => {
  const { configFlags, flagName, NO_FLAG, workerSchema, frontendSchema } = await import('../src/serve/config-schema.js');
  const common = [
    '-m, --model',
    '--model-name',
    '--listen',
    '--etcd',
    '--etcd-prefix',
    '--cluster-token-file',
    '--tls-cert',
    '--tls-key',
    '--tls-ca',
    '--tls-client-auth',
    '--tls-server-name',
  ];
  const established = {
    worker: [
      ...common,
      '--id',
      '--advertise',
      '-p, --provider',
      '-r, --rails',
      '--busy-poll-us',
      '--fabric-address',
      '--blocks',
      '--tokens-per-block',
      '--kv-dtype',
      '--threads',
      '--hugepages',
      '--lease-ms',
      '--max-lease-ms',
      '--peer-idle-ms',
      '--max-streams',
      '--max-queue-ms',
      '--handle-key-file',
      '--transfer-timeout-ms',
      '--register',
      '--etcd-ttl',
    ],
    frontend: [
      ...common,
      '--prefill',
      '--decode',
      '--registry-listen',
      '--mode',
      '--request-timeout-ms',
      '--prefill-timeout-ms',
      '--lease-ms',
      '--health-interval-ms',
      '--body-timeout-ms',
      '--max-connections',
      '--max-inflight',
      '--max-migrations',
      '--keepalive-ms',
    ],
  };
  for (const [kind, schema] of [
    ['worker', workerSchema],
    ['frontend', frontendSchema],
  ] as const) {
    const flags = configFlags(kind);
    const names = flags.map((f) => f.flags.replace(/ <[^>]+>$/, ''));
    for (const name of established[kind]) assert.ok(names.includes(name), `${kind}: ${name} is gone`);
    const keys = Object.keys(schema.properties).filter((k) => !NO_FLAG.has(k));
    assert.deepEqual(
      flags.map((f) => f.key),
      keys,
    );
    for (const f of flags) {
      assert.ok(f.flags.includes(`--${flagName(f.key)}`), f.flags);
      assert.ok(f.description.length > 0, `${kind}.${f.key} has no description`);
    }
  }
  // Secrets never become flags.
  assert.ok(!configFlags('worker').some((f) => f.key === 'handleKey' || f.key === 'clusterToken'));
  const kvDtype = configFlags('worker').find((f) => f.key === 'kvDtype')!;
  assert.deepEqual([kvDtype.choices, kvDtype.default], [['f16', 'f32'], 'f16']);
});

test('the CLI declares every schema flag of the worker and frontend commands', async () => {
  const { execFileSync } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const cli = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));
  const { configFlags } = await import('../src/serve/config-schema.js');
  for (const [command, kind] of [
    ['decode', 'worker'],
    ['frontend', 'frontend'],
  ] as const) {
    const help = execFileSync(process.execPath, ['--import', 'tsx', cli, command, '--help'], { encoding: 'utf8' });
    for (const f of configFlags(kind)) assert.ok(help.includes(f.flags), `${command} --help lacks ${f.flags}`);
    assert.match(help, /--config <file>/);
  }
});
