// Two agents on two simulated hosts (network and pid namespaces joined by veths, test/helpers/hosts.ts): KV
// crosses a real link through the tcp provider, never the same-host paths. With default options an 8 MiB READ
// must arrive byte for byte (agents used to bind 127.0.0.1, so the reader dialled its own loopback and timed
// out); a peer bound to loopback on another host is refused when loaded, naming its address; packet loss and
// latency change nothing but time; a link cut mid-transfer fails it with KVF_ERR_TIMEOUT at its deadline, and
// the next transfer succeeds once the link is back.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Hosts, hostsUnavailable, lossUnavailable, netemUnavailable } from './helpers/hosts.js';
import { PeerError, PeerProcess, closePeers, type TransferSpec } from './helpers/peers.js';

const SKIP = hostsUnavailable();
const SIZE = 8 << 20;

describe('two agents on two simulated hosts (tcp over a veth)', { skip: SKIP }, () => {
  let net: Hosts;
  const peers: PeerProcess[] = [];
  let owner: PeerProcess;
  let reader: PeerProcess;

  const spawn = async (host: number, label: string, address?: string): Promise<PeerProcess> => {
    const p = await PeerProcess.spawn(label, net.prefix(net.hosts[host]!));
    peers.push(p);
    await p.create(label, 'tcp', address === undefined ? {} : { address });
    return p;
  };
  const readAll = (timeoutMs: number): TransferSpec => ({
    op: 'READ',
    peer: owner.name,
    descs: [{ local: 'dst', localOffset: 0, remote: owner.regionId('src'), remoteOffset: 0, length: SIZE }],
    timeoutMs,
  });
  /** A fresh 8 MiB READ; resolves once the reader's copy hashes like the owner's. */
  const exactRead = async (timeoutMs: number): Promise<void> => {
    await owner.fill('src', [[0, SIZE]]);
    const report = await reader.transfer(readAll(timeoutMs), timeoutMs + 10_000);
    assert.equal(report.path, 'fabric');
    assert.equal(report.bytes, SIZE);
    assert.equal(await reader.hash('dst', [[0, SIZE]]), await owner.hash('src', [[0, SIZE]]));
  };

  before(async () => {
    net = Hosts.create(3);
    [owner, reader] = await Promise.all([spawn(0, 'host0-owner'), spawn(1, 'host1-reader')]);
    await Promise.all([owner.alloc('src', SIZE, 'random'), reader.alloc('dst', SIZE, 'zero')]);
  });
  after(async () => {
    await closePeers(peers);
    net?.destroySync();
  });

  test('an 8 MiB READ with default options is byte-exact across the veth', async () => {
    const loaded = await reader.load(await owner.metadata());
    assert.equal(loaded.path, 'fabric', 'another pid namespace: not the same-host path');
    // Before agents bound a routable address by default this timed out: the owner advertised 127.0.0.1.
    await exactRead(5_000);
  });

  test('a peer bound to loopback on another host is refused when loaded, naming its address', async () => {
    const lonely = await spawn(2, 'host2-loopback', '127.0.0.1');
    await assert.rejects(reader.load(await lonely.metadata()), (err: PeerError) => {
      assert.equal(err.remote.code, 'KVF_ERR_PEER_UNREACHABLE');
      assert.match(err.remote.message, /127\.0\.0\.1:\d+/);
      return true;
    });
  });

  test('5% packet loss on the link: still byte-exact', { skip: SKIP || lossUnavailable() }, async () => {
    const link = net.hosts[0]!;
    try {
      net.loss(link, 5);
      await exactRead(60_000);
    } finally {
      net.clear(link);
    }
  });

  test('20 ms latency on the link: still byte-exact', { skip: SKIP || netemUnavailable() }, async () => {
    const link = net.hosts[0]!;
    try {
      net.delay(link, 20);
      await exactRead(60_000);
    } finally {
      net.clear(link);
    }
  });

  test('the link cut mid-transfer: KVF_ERR_TIMEOUT at the deadline, naming the address; the next READ succeeds once it is back', async () => {
    const link = net.hosts[0]!;
    try {
      // Slow enough (40 Mbit/s: ~1.7 s for 8 MiB) that the cut lands inside the transfer.
      net.rate(link, 40);
      const started = Date.now();
      const settled = reader.transferSettled([readAll(3_000)], 30_000);
      await new Promise((r) => setTimeout(r, 300));
      net.cut(link);
      const [outcome] = await settled;
      assert.ok(outcome && !outcome.ok, 'the READ cannot complete through a cut link');
      assert.equal(outcome.code, 'KVF_ERR_TIMEOUT');
      assert.match(outcome.message, new RegExp(`at ${link.ip.replace(/\./g, '\\.')}:\\d+`));
      assert.ok(Date.now() - started < 3_000 + 10_000, 'failed near its 3 s deadline, not later');
    } finally {
      net.heal(link);
      net.clear(link);
    }
    // TCP retransmits what the cut lost (with backoff), so the recovery READ gets a generous deadline.
    await exactRead(30_000);
  });
});
