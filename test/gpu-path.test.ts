// The GPU paths' decision table, row by row, with the seed's FI_HMEM_DISABLE_P2P and FI_EFA_USE_DEVICE_RDMA:
// pure logic, so the rows these machines cannot run (hmem with CUDA) are covered too; and the agent option that
// opens the rails with FI_HMEM (test/staging.test.ts moves stand-in memory over the hmem path).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { choosePath, hmemRefusal, type PathInputs } from '../src/fabric/gpu-path.js';
import { gpuAddon } from '../src/fabric/gpu-native.js';
import { Agent, cudaStatus, decodeMetadata, type KvfError } from '../src/index.js';

const base: PathInputs = {
  local: 'host',
  remote: 'host',
  sameHost: false,
  fastPath: true,
  remoteShared: false,
  remoteIpc: false,
  localHmem: false,
  remoteHmem: false,
  provider: 'tcp;ofi_rxm',
  env: {},
};
const path = (over: Partial<PathInputs>): string => choosePath({ ...base, ...over }).path;

test('host to host: the paths of today', () => {
  assert.equal(path({}), 'fabric');
  assert.equal(path({ sameHost: true }), 'cma');
  assert.equal(path({ sameHost: true, remoteShared: true }), 'mapped');
  assert.equal(path({ sameHost: true, remoteShared: true, fastPath: false }), 'fabric');
  assert.match(choosePath({ ...base, sameHost: true, fastPath: false }).reason, /fast path is off/);
});

test('device memory on this host: cuda-ipc when the driver can reach the other side', () => {
  assert.equal(path({ local: 'cuda', remote: 'cuda', sameHost: true, remoteIpc: true }), 'cuda-ipc');
  assert.equal(path({ local: 'host', remote: 'cuda', sameHost: true, remoteIpc: true }), 'cuda-ipc');
  assert.equal(path({ local: 'cuda', remote: 'host', sameHost: true, remoteShared: true }), 'cuda-ipc');
  // Cross-memory attach cannot reach a GPU: a private host region of the peer is staged.
  const c = choosePath({ ...base, local: 'cuda', remote: 'host', sameHost: true });
  assert.deepEqual([c.path, /not in shared memory/.test(c.reason)], ['staged', true]);
  const noIpc = choosePath({ ...base, local: 'cuda', remote: 'cuda', sameHost: true });
  assert.deepEqual([noIpc.path, /no CUDA IPC handle/.test(noIpc.reason)], ['staged', true]);
  assert.equal(path({ local: 'cuda', remote: 'cuda', sameHost: true, remoteIpc: true, fastPath: false }), 'staged');
});

test('across hosts: hmem where both providers registered the device memory and the seed’s settings allow it, else staged', () => {
  const efa = { local: 'cuda', remote: 'cuda', provider: 'efa', localHmem: true, remoteHmem: true } as const;
  assert.equal(path(efa), 'hmem');
  assert.equal(path({ ...efa, env: { FI_EFA_USE_DEVICE_RDMA: '1' } }), 'hmem');
  assert.equal(path({ ...efa, env: { FI_EFA_USE_DEVICE_RDMA: '0' } }), 'staged');
  assert.equal(path({ ...efa, env: { FI_HMEM_DISABLE_P2P: '1' } }), 'staged');
  assert.equal(path({ ...efa, env: { FI_HMEM_DISABLE_P2P: '0' } }), 'hmem');
  // FI_EFA_USE_DEVICE_RDMA is efa's own: another provider ignores it.
  assert.equal(path({ ...efa, provider: 'tcp;ofi_rxm', env: { FI_EFA_USE_DEVICE_RDMA: '0' } }), 'hmem');
  const plain = choosePath({ ...base, local: 'cuda', remote: 'host' });
  assert.deepEqual([plain.path, /does not register device memory/.test(plain.reason)], ['staged', true]);
  // Host memory needs no FI_HMEM: only the device side must be registered, on whichever side it is.
  assert.equal(path({ local: 'host', remote: 'cuda', remoteHmem: true, provider: 'efa' }), 'hmem');
  assert.equal(path({ local: 'cuda', remote: 'host', localHmem: true, provider: 'efa' }), 'hmem');
  // One side registered is not enough when both are device memory.
  const half = choosePath({ ...base, ...efa, remoteHmem: false });
  assert.deepEqual([half.path, /peer did not register/.test(half.reason)], ['staged', true]);
  assert.equal(path({ ...efa, localHmem: false }), 'staged');
  // On one host, cuda-ipc still comes first; without an IPC handle, registered memory goes over the fabric.
  assert.equal(path({ ...efa, sameHost: true, remoteIpc: true }), 'cuda-ipc');
  assert.equal(path({ ...efa, sameHost: true }), 'hmem');
});

test('hmemRefusal names the setting that forbids device RDMA', () => {
  assert.equal(hmemRefusal('efa', {}), '');
  assert.match(hmemRefusal('efa', { FI_HMEM_DISABLE_P2P: 'yes' }), /FI_HMEM_DISABLE_P2P/);
  assert.match(hmemRefusal('efa', { FI_EFA_USE_DEVICE_RDMA: 'off' }), /FI_EFA_USE_DEVICE_RDMA/);
  assert.equal(hmemRefusal('efa', { FI_EFA_USE_DEVICE_RDMA: 'garbage' }), '');
});

test('AgentOptions.hmem: true requires FI_HMEM, a provider without it refuses to open, false and auto stay off here', async () => {
  await assert.rejects(Agent.create({ name: 'hmem-bad', provider: 'shm', hmem: 'yes' as never, logger: false }), { code: 'KVF_ERR_INVALID_ARGUMENT' });
  if (!gpuAddon.libfabricHmem('tcp;ofi_rxm').hmem) {
    await assert.rejects(Agent.create({ name: 'hmem-tcp', provider: 'tcp', hmem: true, logger: false }), (e: KvfError) => {
      assert.equal(e.code, 'KVF_ERR_PROVIDER_UNAVAILABLE');
      assert.match(e.message, /FI_HMEM/);
      return true;
    });
  }
  const plain = await Agent.create({ name: 'hmem-auto', provider: 'shm', logger: false });
  // 'auto' opens with FI_HMEM only with a GPU and a libfabric built with CUDA; neither is here in CI.
  if (!cudaStatus().available) assert.equal(plain.info.hmem, false);
  await plain.close();
  if (!gpuAddon.libfabricHmem('shm').hmem) return;
  const agent = await Agent.create({ name: 'hmem-on', provider: 'shm', hmem: true, logger: false });
  try {
    assert.equal(agent.info.hmem, true);
    const region = agent.allocate(8192, { device: 'stand-in' });
    const described = decodeMetadata(agent.getLocalMetadata()).devices![0]!;
    assert.equal(described.fabric?.keys.length, agent.rails, 'the fabric registration is advertised with a key per rail');
    region.deregister();
    assert.equal(decodeMetadata(agent.getLocalMetadata()).devices, undefined);
  } finally {
    await agent.close();
  }
});
