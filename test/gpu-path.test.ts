// The GPU paths' decision table, row by row, with the seed's FI_HMEM_DISABLE_P2P and FI_EFA_USE_DEVICE_RDMA:
// pure logic, so the rows these machines cannot run (hmem) are covered too.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { choosePath, hmemRefusal, type PathInputs } from '../src/fabric/gpu-path.js';

const base: PathInputs = {
  local: 'host',
  remote: 'host',
  sameHost: false,
  fastPath: true,
  remoteShared: false,
  remoteIpc: false,
  providerHmemCuda: false,
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

test('across hosts: hmem where the provider registers CUDA memory and the seed’s settings allow it, else staged', () => {
  const efa = { local: 'cuda', remote: 'cuda', provider: 'efa', providerHmemCuda: true } as const;
  assert.equal(path(efa), 'hmem');
  assert.equal(path({ ...efa, env: { FI_EFA_USE_DEVICE_RDMA: '1' } }), 'hmem');
  assert.equal(path({ ...efa, env: { FI_EFA_USE_DEVICE_RDMA: '0' } }), 'staged');
  assert.equal(path({ ...efa, env: { FI_HMEM_DISABLE_P2P: '1' } }), 'staged');
  assert.equal(path({ ...efa, env: { FI_HMEM_DISABLE_P2P: '0' } }), 'hmem');
  // FI_EFA_USE_DEVICE_RDMA is efa's own: another provider ignores it.
  assert.equal(path({ ...efa, provider: 'tcp;ofi_rxm', env: { FI_EFA_USE_DEVICE_RDMA: '0' } }), 'hmem');
  const plain = choosePath({ ...base, local: 'cuda', remote: 'host' });
  assert.deepEqual([plain.path, /does not register CUDA memory/.test(plain.reason)], ['staged', true]);
  assert.equal(path({ local: 'host', remote: 'cuda', providerHmemCuda: true, provider: 'efa' }), 'hmem');
});

test('hmemRefusal names the setting that forbids device RDMA', () => {
  assert.equal(hmemRefusal('efa', {}), '');
  assert.match(hmemRefusal('efa', { FI_HMEM_DISABLE_P2P: 'yes' }), /FI_HMEM_DISABLE_P2P/);
  assert.match(hmemRefusal('efa', { FI_EFA_USE_DEVICE_RDMA: 'off' }), /FI_EFA_USE_DEVICE_RDMA/);
  assert.equal(hmemRefusal('efa', { FI_EFA_USE_DEVICE_RDMA: 'garbage' }), '');
});
