// N×M rails: every local rail reaches every remote rail (NIXL's 32-rail metadata once broke; the seed's
// workaround used one NIC of 32). Descriptors spread over the initiator's rails; data stays byte-exact.
import assert from 'node:assert/strict';
import { randomFillSync } from 'node:crypto';
import { after, describe, test } from 'node:test';

import { Agent } from '../src/index.js';

for (const provider of ['tcp', 'shm']) {
  describe(`rails over ${provider}`, () => {
    const agents: Agent[] = [];
    after(() => Promise.all(agents.map((a) => a.close())));

    for (const [localRails, remoteRails] of [
      [4, 2],
      [3, 5],
      [8, 1],
    ] as const) {
      test(`${localRails} local × ${remoteRails} remote rails`, async () => {
        const a = await Agent.create({ name: `rails-a-${localRails}-${remoteRails}`, provider, rails: localRails, logger: false });
        const b = await Agent.create({ name: `rails-b-${localRails}-${remoteRails}`, provider, rails: remoteRails, logger: false });
        agents.push(a, b);
        assert.equal(a.rails, localRails);
        assert.equal(b.rails, remoteRails);
        const size = 8 << 20;
        const src = a.registerMemory(randomFillSync(Buffer.alloc(size)));
        const back = a.allocate(size);
        const dst = b.allocate(size);
        const peer = a.loadRemoteMetadata(b.getLocalMetadata());
        assert.equal(peer.rails, remoteRails);
        // Odd sizes, so blocks do not line up with anything.
        const block = 65536 + 17;
        const descs = [];
        for (let off = 0; off < size; off += block) {
          descs.push({ local: src, localOffset: off, remote: dst.id, remoteOffset: off, length: Math.min(block, size - off) });
        }
        const w = await a.write(peer, descs);
        assert.deepEqual(
          w.rails,
          Array.from({ length: localRails }, (_, i) => i),
        );
        assert.equal(Buffer.compare(src.bytes, dst.bytes), 0);
        const r = await a.read(
          peer,
          descs.map((d) => ({ ...d, local: back })),
        );
        assert.equal(r.bytes, size);
        assert.equal(Buffer.compare(src.bytes, back.bytes), 0);
      });
    }
  });
}
