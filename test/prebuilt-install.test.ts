// Installing kvfabric without a compiler: `npm pack` of this checkout carries the prebuilt addon
// (prebuilds/<platform>-<arch>/node.napi.glibc.node, scripts/prebuild.mjs), and installing that tarball into an
// empty project on a PATH with no cmake, make or g++ (only node) loads it: the install script finds the prebuild
// and compiles nothing, and so does the package at run time (the prebuild is found even where install scripts are
// blocked, as npm 12 does by default). npm takes the dependencies' tarballs from its cache, which `npm ci` filled.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const npmCli = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js');

test(
  'the packed tarball installs and loads its prebuilt addon on a machine without a compiler',
  { skip: !existsSync(npmCli) && `no npm at ${npmCli}`, timeout: 300_000 },
  (t) => {
    const work = mkdtempSync(join(tmpdir(), 'kvf-prebuilt-'));
    try {
      execFileSync(process.execPath, [join(root, 'scripts', 'prebuild.mjs'), '--from-build'], { cwd: root, stdio: 'pipe' });
      const packed = JSON.parse(
        execFileSync(process.execPath, [npmCli, 'pack', '--ignore-scripts', '--json', '--pack-destination', work], { cwd: root, encoding: 'utf8' }),
      ) as {
        filename: string;
        files: { path: string }[];
      }[];
      const files = packed[0]!.files.map((f) => f.path);
      assert.ok(files.includes(`prebuilds/${process.platform}-${process.arch}/node.napi.glibc.node`), 'the tarball carries the prebuild');
      assert.ok(!files.some((f) => f.startsWith('build/')), 'and no build folder');

      // PATH: node and the shell npm runs scripts with. No compiler, no cmake, no npx: compiling would fail.
      const bin = join(work, 'bin');
      mkdirSync(bin);
      symlinkSync(process.execPath, join(bin, 'node'));
      symlinkSync('/bin/sh', join(bin, 'sh'));
      const env = { HOME: process.env.HOME ?? work, PATH: bin, npm_config_cache: process.env.npm_config_cache ?? join(process.env.HOME ?? '', '.npm') };
      const project = join(work, 'project');
      mkdirSync(project);
      writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'uses-kvfabric', private: true, type: 'module' }));
      try {
        execFileSync(process.execPath, [npmCli, 'install', '--prefer-offline', '--no-audit', '--no-fund', join(work, packed[0]!.filename)], {
          cwd: project,
          env,
          stdio: 'pipe',
        });
      } catch (err) {
        // The dependencies' tarballs come from npm's cache, their version lists from the registry.
        const stderr = String((err as { stderr?: unknown }).stderr ?? '');
        if (/ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNREFUSED|ECONNRESET/.test(stderr)) return t.skip(`the npm registry cannot be reached: ${stderr.split('\n')[0]}`);
        throw err;
      }
      const installed = join(project, 'node_modules', 'kvfabric');
      assert.ok(!existsSync(join(installed, 'build')), `nothing was compiled: ${readdirSync(installed).join(', ')}`);

      const script = `
      import { Agent } from 'kvfabric';
      const a = await Agent.create({ name: 'pre-a', provider: 'shm', logger: false });
      const b = await Agent.create({ name: 'pre-b', provider: 'shm', logger: false });
      const src = a.registerMemory(Buffer.from('prebuilt'));
      const dst = b.allocate(4096);
      await a.write(a.loadRemoteMetadata(b.getLocalMetadata()), [{ local: src, localOffset: 0, remote: dst.id, remoteOffset: 0, length: 8 }]);
      console.log(Buffer.from(dst.bytes.subarray(0, 8)).toString());
      await Promise.all([a.close(), b.close()]);
    `;
      const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: project, env, encoding: 'utf8' });
      assert.equal(out.trim(), 'prebuilt');
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  },
);
