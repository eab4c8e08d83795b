import assert from 'node:assert/strict';
import { test } from 'node:test';

import { requestedProvider, resolveBackend, tcpBinding, providerStack } from '../src/fabric/config.js';
import { KvfError } from '../src/fabric/errors.js';

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

test('tcp binds loopback unless an address or an interface is configured', () => {
  assert.deepEqual(tcpBinding(undefined, undefined, {}), { node: '127.0.0.1' });
  assert.deepEqual(tcpBinding(undefined, undefined, { FI_TCP_IFACE: 'eth0' }), { domain: 'eth0' });
  assert.deepEqual(tcpBinding(undefined, undefined, { KVF_ADDRESS: '10.0.0.5' }), { node: '10.0.0.5' });
  assert.deepEqual(tcpBinding('10.1.1.1', 'eth1', {}), { node: '10.1.1.1', domain: 'eth1' });
});

test('worker busyPollUs: from --busy-poll-us or KVF_BUSY_POLL_US, checked', async () => {
  const { workerConfig } = await import('../src/serve/config.js');
  assert.equal(workerConfig({ flags: { role: 'prefill' }, env: { KVF_BUSY_POLL_US: '500' } }).busyPollUs, 500);
  assert.equal(workerConfig({ flags: { role: 'decode', busyPollUs: '0' }, env: {} }).busyPollUs, 0);
  assert.equal(workerConfig({ flags: { role: 'decode' }, env: {} }).busyPollUs, undefined);
  assert.throws(() => workerConfig({ flags: { role: 'prefill' }, env: { KVF_BUSY_POLL_US: '-1' } }), { code: 'KVF_ERR_BAD_CONFIG' });
});
