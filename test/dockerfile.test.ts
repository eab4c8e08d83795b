// The image is built by steps CI runs: the Dockerfile's build-stage apt line must be the same package list
// as scripts/setup.sh and .ci/run (so `npm test` in CI exercises what the image does), the build runs
// scripts/setup.sh itself, and the runtime has libfabric and node. Docker is not needed to check that.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { ROOT } from './helpers/serve.js';

const read = (p: string) => readFileSync(join(ROOT, p), 'utf8');
const dockerfile = read('Dockerfile').replace(/\\\n/g, ' ');

/** The packages of each `apt-get install` in a stage of the Dockerfile. */
function stageInstalls(stage: string): string[][] {
  const body = dockerfile.split(/^FROM /m).find((s) => new RegExp(`\\bAS ${stage}\\b`).test(s.split('\n')[0]!));
  assert.ok(body, `stage ${stage}`);
  return [...body.matchAll(/apt-get install -y --no-install-recommends ([^&\n]+)/g)].map((m) => m[1]!.trim().split(/\s+/));
}

test("the build stage installs exactly scripts/setup.sh's and .ci/run's packages, then runs setup.sh", () => {
  const setup = read('scripts/setup.sh')
    .match(/^packages=\(([^)]*)\)/m)?.[1]
    ?.trim()
    .split(/\s+/);
  assert.ok(setup && setup.length > 5);
  const ci = read('.ci/run')
    .match(/apt-get install -y --no-install-recommends ([^\n]+)/)?.[1]
    ?.trim()
    .split(/\s+/);
  const [build, ...more] = stageInstalls('build');
  assert.deepEqual(more, [], 'one apt line in the build stage');
  assert.deepEqual(build, setup, 'Dockerfile build stage vs scripts/setup.sh packages=(...)');
  assert.deepEqual(ci, setup, '.ci/run vs scripts/setup.sh');
  assert.match(dockerfile, /RUN \.\/scripts\/setup\.sh/);
});

test('the runtime stage has libfabric and node, the addon and dist from the build, and the kvfabric command', () => {
  const [runtime] = stageInstalls('runtime');
  assert.ok(runtime!.includes('libfabric1'), 'libfabric1');
  assert.ok(runtime!.includes('libfabric-bin'), 'fi_info for kvfabric doctor');
  assert.match(dockerfile, /^ARG NODE_IMAGE=node:(\d+)-/m);
  const nodeMajor = Number(dockerfile.match(/^ARG NODE_IMAGE=node:(\d+)-/m)![1]);
  const engines = (JSON.parse(read('package.json')) as { engines: { node: string } }).engines.node;
  assert.ok(nodeMajor >= Number(engines.match(/\d+/)![0]), `node ${nodeMajor} satisfies engines ${engines}`);
  assert.match(dockerfile, /COPY --from=build \/opt\/kvfabric \/opt\/kvfabric/);
  assert.match(dockerfile, /exec node \/opt\/kvfabric\/dist\/cli\/main\.js/);
  // The efa libfabric the ConfigMap's KVF_LIBFABRIC names is where the EFA installer puts it.
  assert.match(dockerfile, /efa_installer\.sh -y --skip-kmod/);
  assert.match(read('kubernetes/common/configmap.yaml'), /KVF_LIBFABRIC: "\/opt\/amazon\/efa\/lib\/libfabric\.so\.1"/);
});

test('docker/libfabric/build.sh and scripts/test-inference.sh are executable bash that parses', () => {
  for (const script of ['docker/libfabric/build.sh', 'scripts/test-inference.sh']) {
    accessSync(join(ROOT, script), constants.X_OK);
    execFileSync('bash', ['-n', join(ROOT, script)]);
  }
  assert.match(read('docker/libfabric/build.sh'), /docker build .*-f "\$root\/Dockerfile"/);
});
