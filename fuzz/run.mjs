#!/usr/bin/env node
// npm run fuzz [-- --minutes N] [--target NAME]...: coverage-guided fuzzing of kvfabric's decoders of untrusted
// input, one target after another, each for N minutes (default 1). TypeScript targets (fuzz/targets/*.ts) run
// under jazzer.js (installed into fuzz/node_modules on first use, never a dependency of the package); C++
// targets (fuzz/native/*_fuzz.cc) are built with clang's libFuzzer and ASan/UBSan when clang++ is found.
//
// Each target reads fuzz/corpus/<target>/ (committed: seeds and past crashes) and grows a working corpus in
// fuzz/build/corpus/<target>/. A crash is written to fuzz/corpus/<target>/crash-* so that
// test/fuzz-corpus.test.ts replays it from then on. A summary (execs, seconds, findings) is printed and written
// to fuzz/build/results.json. Exit status 1 when any target found something.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { ensureJazzerLoads } from './tools/jazzer-compat.mjs';

const FUZZ = dirname(fileURLToPath(import.meta.url));
const ROOT = join(FUZZ, '..');
const BUILD = join(FUZZ, 'build');

// sync: the target returns no promise (jazzer.js runs it without the async round trip, several times faster).
const JS_TARGETS = { metadata: { sync: true }, 'kv-handle': { sync: true }, gguf: { sync: true }, http: { sync: false } };
// Sources of each C++ target besides its fuzz/native/<name>_fuzz.cc: instrumented ones, and ones built with
// g++ uninstrumented (clang 14 rejects dequant.cc's __builtin_cpu_supports("f16c"); none of them parse input).
const NATIVE_TARGETS = {
  'gguf-native': {
    main: 'gguf_fuzz.cc',
    sources: ['native/engine/gguf.cc', 'native/engine/model.cc', 'native/engine/kv_cache.cc'],
    plain: [
      'native/engine/dequant.cc',
      'native/engine/session.cc',
      'native/engine/thread_pool.cc',
      'native/engine/qdot.cc',
      'native/engine/qdot_avx2.cc',
      'native/engine/qdot_avx512vnni.cc',
    ],
  },
  'notification-native': { main: 'notification_fuzz.cc', sources: ['native/core/notification.cc'], plain: [] },
};

const { values } = parseArgs({ options: { minutes: { type: 'string', default: '1' }, target: { type: 'string', multiple: true } } });
const minutes = Number(values.minutes);
if (!(minutes > 0)) throw new Error(`--minutes must be a positive number, got ${values.minutes}`);
const all = [...Object.keys(JS_TARGETS), ...Object.keys(NATIVE_TARGETS)];
const selected = values.target ?? all;
for (const t of selected) if (!all.includes(t)) throw new Error(`unknown target ${t}; targets: ${all.join(', ')}`);
mkdirSync(BUILD, { recursive: true });

function run(cmd, args, options = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...options });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal})`);
}

function which(names) {
  return names.find((n) => spawnSync(n, ['--version'], { stdio: 'ignore' }).status === 0);
}

const newer = (out, inputs) => !existsSync(out) || inputs.some((f) => statSync(f).mtimeMs > statSync(out).mtimeMs);

function buildNative(name, spec, clang) {
  const out = join(BUILD, name);
  const cflags = spawnSync('pkg-config', ['--cflags', 'libfabric'], { encoding: 'utf8' }).stdout.trim().split(/\s+/).filter(Boolean);
  const common = ['-std=c++17', `-I${join(ROOT, 'native')}`, ...cflags];
  const objects = spec.plain.map((src) => {
    const obj = join(BUILD, `${src.replace(/[/.]/g, '_')}.o`);
    if (newer(obj, [join(ROOT, src)])) run('g++', [...common, '-O2', '-fPIC', '-ffp-contract=off', '-c', join(ROOT, src), '-o', obj]);
    return obj;
  });
  const sources = [join(FUZZ, 'native', spec.main), ...spec.sources.map((s) => join(ROOT, s))];
  if (newer(out, [...sources, ...objects])) {
    console.log(`building ${name} with ${clang}`);
    const flags = [
      '-O1',
      '-g',
      '-fsanitize=fuzzer,address,undefined',
      '-fno-sanitize-recover=undefined',
      '-Wall',
      '-Wextra',
      '-Wpedantic',
      '-Wno-unused-parameter',
      '-Werror',
    ];
    run(clang, [...common, ...flags, ...sources, ...objects, '-lpthread', '-o', out]);
  }
  return out;
}

/** Runs one fuzzer, echoing its output, and returns libFuzzer's own count of executions and the exit status. */
function fuzzOnce(cmd, args, env) {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'inherit', 'pipe'] });
    let execs = 0;
    let tail = '';
    child.stderr.on('data', (chunk) => {
      process.stderr.write(chunk);
      tail = (tail + chunk.toString()).slice(-20_000);
      for (const m of tail.matchAll(/^#(\d+)\s/gm)) execs = Math.max(execs, Number(m[1]));
      const done = /Done (\d+) runs/.exec(tail);
      if (done) execs = Math.max(execs, Number(done[1]));
    });
    child.on('close', (code, signal) => resolve({ execs, code: code ?? (signal ? 128 : 1) }));
  });
}

// The targets run under tsx, which does not type-check: check them (and the replay test) first.
run(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(FUZZ, 'tsconfig.json')]);

const seconds = Math.round(minutes * 60);
const results = [];
let preload;
const clang = which(['clang++-14', 'clang++']);
for (const target of selected) {
  const seeds = join(FUZZ, 'corpus', target);
  const work = join(BUILD, 'corpus', target);
  mkdirSync(seeds, { recursive: true });
  mkdirSync(work, { recursive: true });
  const before = new Set(readdirSync(seeds));
  const libFuzzerArgs = [`-max_total_time=${seconds}`, `-artifact_prefix=${seeds}/`, '-rss_limit_mb=2048', '-timeout=10', '-print_final_stats=1'];
  const started = Date.now();
  let outcome;
  if (target in JS_TARGETS) {
    if (!existsSync(join(FUZZ, 'node_modules', '@jazzer.js', 'core'))) run('npm', ['--prefix', FUZZ, 'install', '--no-audit', '--no-fund']);
    preload ??= ensureJazzerLoads(FUZZ, BUILD);
    const env = { ...process.env, ...(preload ? { LD_PRELOAD: preload } : {}) };
    // tsx loads the TypeScript; jazzer.js's ESM loader instruments what it returns (src/ included, node_modules not).
    const jazzer = join(FUZZ, 'node_modules', '@jazzer.js', 'core', 'dist', 'cli.js');
    const sync = JS_TARGETS[target].sync ? ['--sync'] : [];
    outcome = await fuzzOnce(process.execPath, ['--import', 'tsx', jazzer, join(FUZZ, 'targets', target), work, seeds, ...sync, '--', ...libFuzzerArgs], env);
  } else if (!clang) {
    console.warn(`skipping ${target}: no clang++ (apt-get install clang-14 libclang-rt-14-dev)`);
    results.push({ target, engine: 'libFuzzer', skipped: 'no clang++' });
    continue;
  } else {
    if (target === 'gguf-native' && !existsSync(join(work, 'tiny-llama.gguf'))) {
      // The whole tiny model (too large to commit): the one seed that gets through Model::FromGguf.
      run(process.execPath, [join(ROOT, 'scripts', 'make-tiny-model.mjs'), join(work, 'tiny-llama.gguf')], { stdio: 'ignore' });
    }
    const binary = buildNative(target, NATIVE_TARGETS[target], clang);
    outcome = await fuzzOnce(binary, [work, seeds, ...libFuzzerArgs], process.env);
  }
  const findings = readdirSync(seeds).filter((f) => !before.has(f));
  results.push({
    target,
    engine: target in JS_TARGETS ? 'jazzer.js' : 'libFuzzer',
    seconds: Math.round((Date.now() - started) / 1000),
    execs: outcome.execs,
    exit: outcome.code,
    findings,
  });
}

console.log('\ntarget               engine      seconds        execs  findings');
for (const r of results) {
  if (r.skipped) console.log(`${r.target.padEnd(20)} ${r.engine.padEnd(10)}  skipped: ${r.skipped}`);
  else
    console.log(
      `${r.target.padEnd(20)} ${r.engine.padEnd(10)} ${String(r.seconds).padStart(8)} ${String(r.execs).padStart(12)}  ${r.findings.length ? r.findings.join(' ') : r.exit === 0 ? 'none' : `exit ${r.exit}`}`,
    );
}
writeFileSync(join(BUILD, 'results.json'), JSON.stringify({ date: new Date().toISOString(), minutes, results }, null, 2) + '\n');
process.exit(results.some((r) => r.findings?.length || (r.exit !== undefined && r.exit !== 0)) ? 1 : 0);
