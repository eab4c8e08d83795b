// Every kind of memory a user can register moves bytes correctly, and addon-allocated memory honours its
// hugepage request (or says why not).
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';

import { Agent, KvfError, type MemoryInput } from '../src/index.js';

let a: Agent;
let b: Agent;
before(async () => {
  a = await Agent.create({ name: 'mem-a', provider: 'shm', logger: false });
  b = await Agent.create({ name: 'mem-b', provider: 'shm', logger: false });
});
after(() => Promise.all([a.close(), b.close()]));

const size = 1 << 20;
const kinds: Record<string, () => { memory: MemoryInput; bytes: Uint8Array }> = {
  Buffer: () => {
    const m = Buffer.alloc(size);
    return { memory: m, bytes: m };
  },
  'Uint8Array at an offset': () => {
    const m = new Uint8Array(new ArrayBuffer(size + 4096), 4096 - 7, size);
    return { memory: m, bytes: m };
  },
  Float64Array: () => {
    const m = new Float64Array(size / 8);
    return { memory: m, bytes: new Uint8Array(m.buffer) };
  },
  DataView: () => {
    const ab = new ArrayBuffer(size);
    return { memory: new DataView(ab), bytes: new Uint8Array(ab) };
  },
  ArrayBuffer: () => {
    const ab = new ArrayBuffer(size);
    return { memory: ab, bytes: new Uint8Array(ab) };
  },
  SharedArrayBuffer: () => {
    const sab = new SharedArrayBuffer(size);
    return { memory: sab, bytes: new Uint8Array(sab) };
  },
};

for (const [kind, make] of Object.entries(kinds)) {
  test(`${kind}: registered as source and destination, WRITE and READ are byte-exact`, async () => {
    const src = make();
    randomFillSync(src.bytes);
    const dst = make();
    const back = make();
    const rs = a.registerMemory(src.memory);
    const rb = a.registerMemory(back.memory);
    const rd = b.registerMemory(dst.memory);
    assert.equal(rs.length, size);
    const peer = a.loadRemoteMetadata(b.getLocalMetadata());
    await a.write(peer, [{ local: rs, localOffset: 0, remote: rd.id, remoteOffset: 0, length: size }]);
    assert.equal(Buffer.compare(src.bytes, dst.bytes), 0);
    await a.read(peer, [{ local: rb, localOffset: 0, remote: rd.id, remoteOffset: 0, length: size }]);
    assert.equal(Buffer.compare(src.bytes, back.bytes), 0);
    rs.deregister();
    rb.deregister();
    rd.deregister();
  });
}

test('remoteAccess: false keeps a region out of the metadata', () => {
  const hidden = b.allocate(4096, { remoteAccess: false });
  const shown = b.allocate(4096);
  const peer = a.loadRemoteMetadata(b.getLocalMetadata());
  const ids = peer.regions.map((r) => r.id);
  assert.ok(ids.includes(shown.id));
  assert.ok(!ids.includes(hidden.id));
  hidden.deregister();
  shown.deregister();
});

test('allocate: hugepages when reserved, a clear KVF_ERR_ALLOC when required and missing; shared by default only on hugepages', () => {
  const free = Number(/HugePages_Free:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  // shared: 'auto' (the default) shares where shared memory is hugepages too: reserved ones, or transparent
  // ones where the kernel gives them to shared memory.
  const shmemHuge = !/\[(never|deny)\]/.test(readFileSync('/sys/kernel/mm/transparent_hugepage/shmem_enabled', 'utf8'));
  const maybe = a.allocate(4 << 20, { hugepages: true });
  assert.equal(maybe.length, 4 << 20);
  maybe.bytes.fill(1); // the memory is really there
  if (free >= 4) {
    assert.equal(maybe.hugepages, true);
    assert.equal(maybe.shared, true, 'reserved hugepages are shared by default');
    const own = a.allocate(4 << 20, { hugepages: true, shared: false });
    assert.deepEqual([own.hugepages, own.shared], [true, false]);
    own.deregister();
  } else {
    assert.equal(maybe.hugepages, false);
    assert.equal(maybe.shared, shmemHuge);
    assert.throws(
      () => a.allocate(4 << 20, { hugepages: 'require' }),
      (err: KvfError) => err instanceof KvfError && err.code === 'KVF_ERR_ALLOC' && /hugepages/.test(err.message),
    );
  }
  maybe.deregister();
  const plain = a.allocate(12345);
  assert.equal(plain.hugepages, false);
  assert.equal(plain.shared, shmemHuge);
  assert.equal(plain.length, 12345);
  plain.deregister();
});
