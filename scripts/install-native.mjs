#!/usr/bin/env node
// npm's install hook: use a prebuild or an existing build when one loads, otherwise compile with cmake-js.
// (node-gyp-build's own install command can only fall back to node-gyp.)
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
try {
  require('node-gyp-build')(root);
  process.exit(0);
} catch {
  const r = spawnSync('npx', ['cmake-js', 'compile', '--CDKVF_WERROR=ON'], { cwd: root, stdio: 'inherit' });
  process.exit(r.status ?? 1);
}
