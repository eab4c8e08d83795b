// The package as users consume it: `import { Agent } from 'kvfabric'` through the exports map (the built
// dist/, which scripts/run-tests.mjs brings up to date), and the kvfabric CLI.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

import { ERROR_CODES } from '../src/common/error-registry.js';

const root = new URL('..', import.meta.url);

test('import { Agent } from "kvfabric" resolves through the exports map and works', { timeout: 60_000 }, () => {
  const script = `
    import { Agent, KvfError, ERROR_CODES } from 'kvfabric';
    const a = await Agent.create({ name: 'pkg-a', provider: 'shm', logger: false });
    const b = await Agent.create({ name: 'pkg-b', provider: 'shm', logger: false });
    const src = a.registerMemory(Buffer.from('kvfabric over shm'));
    const dst = b.allocate(4096);
    const peer = a.loadRemoteMetadata(b.getLocalMetadata());
    const r = await a.write(peer, [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: src.length }]);
    console.log(JSON.stringify({ text: Buffer.from(dst.bytes.subarray(0, src.length)).toString(), provider: r.provider,
      isClass: typeof KvfError === 'function', codes: Object.keys(ERROR_CODES).sort() }));
    await Promise.all([a.close(), b.close()]);
  `;
  const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: root, encoding: 'utf8' }));
  // The package's registry is the source's, code for code (a build that drops or renames one fails here).
  assert.deepEqual(out, { text: 'kvfabric over shm', provider: 'shm', isClass: true, codes: Object.keys(ERROR_CODES).sort() });
});

test('kvfabric info reports what the agent chose', { timeout: 60_000 }, () => {
  const out = JSON.parse(execFileSync(process.execPath, ['dist/cli/main.js', 'info', '--provider', 'tcp'], { cwd: root, encoding: 'utf8' }));
  assert.equal(out.backend, 'LIBFABRIC');
  assert.equal(out.provider, 'tcp;ofi_rxm');
  assert.equal(out.rails, 1);
  assert.deepEqual(out.domains, ['lo']);
});
