#!/usr/bin/env node
// Builds the addon with cmake-js and stores it in the prebuildify layout that node-gyp-build loads:
// prebuilds/<platform>-<arch>/node.napi.<libc>.node. (prebuildify itself drives node-gyp only.)
// The binary is Node-API, so one build serves every Node.js ≥ 20 on the platform.
// --from-build: take build/Release as it is instead of rebuilding (the prebuilt-install test).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const run = (cmd, args) => {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
};
if (!process.argv.includes('--from-build')) run('npx', ['cmake-js', 'rebuild', '--CDKVF_WERROR=ON']);
const libc = process.report?.getReport().header.glibcVersionRuntime ? 'glibc' : 'musl';
const dir = join(root, 'prebuilds', `${process.platform}-${process.arch}`);
mkdirSync(dir, { recursive: true });
const out = join(dir, `node.napi.${libc}.node`);
copyFileSync(join(root, 'build', 'Release', 'kvfabric.node'), out);
run('strip', ['--strip-unneeded', out]);
console.log(`prebuild written: ${out}`);
