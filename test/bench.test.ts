// `kvfabric bench` through the real CLI (dist/cli/main.js): initiator and target as two real processes
// (forked, or started separately and reached by address), real providers, the JSON, table and chart files it
// writes. Tiny pools and short points; no assertion on any timing or bandwidth figure beyond "> 0".
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { parseBenchOptions, parseSize, type RawBenchOptions } from '../src/bench/options.js';
import type { PointResult } from '../src/bench/point.js';
import type { BenchResult } from '../src/bench/report.js';
import type { KvfError } from '../src/common/errors.js';
import { CLI } from './helpers/serve.js';

const dir = mkdtempSync(join(tmpdir(), 'kvf-bench-'));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function bench(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'bench', ...args], { timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

// The JSON is the BenchResult the tool writes (options' undefined values become null, hence the loose options).
type Point = PointResult;
type Result = Omit<BenchResult, 'options'> & { options: Record<string, unknown> };

const readJson = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Result;

function checkPoint(p: Point): void {
  assert.ok(p.transfers > 0, `transfers in ${JSON.stringify(p)}`);
  assert.equal(p.descriptors, p.transfers * p.batch);
  assert.equal(p.bytes, p.descriptors * p.blockBytes);
  assert.ok(p.gbps > 0 && p.opsPerSec > 0 && p.seconds > 0);
  assert.ok(p.latencyMs.p50 > 0 && p.latencyMs.p99 >= p.latencyMs.p50);
  assert.ok(p.postUsPerDesc >= 0 && p.jsUsPerDesc >= 0);
  assert.ok(p.loopDelay.maxMs >= p.loopDelay.p99Ms && p.loopDelay.p99Ms >= p.loopDelay.p50Ms);
  assert.ok(['fabric', 'cma', 'mapped'].includes(p.path), p.path);
}

describe('kvfabric bench', { timeout: 300_000 }, () => {
  test('shm, forked target: a point per size and op, the table, the JSON and an SVG chart', async () => {
    const json = join(dir, 'shm.json');
    const svg = join(dir, 'shm.svg');
    const r = await bench([
      '--provider',
      'shm',
      '--block-sizes',
      '4K,1M',
      '--duration',
      '0.2',
      '--pool',
      '8M',
      '--json',
      json,
      '--chart',
      svg,
      '--no-progress',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const result = readJson(json);
    assert.equal(result.benchmark, 'kvfabric-bench');
    assert.equal(result.provider, 'shm');
    assert.equal(result.target, 'fork');
    assert.ok(result.machine.cores > 0 && result.machine.libfabric.length > 0);
    assert.ok(result.targetMachine.host.length > 0);
    assert.equal(result.options.pool, 8 << 20);
    assert.ok(result.idleLoopDelay.maxMs >= result.idleLoopDelay.p50Ms);
    assert.deepEqual(
      result.points.map((p) => `${p.op} ${p.blockBytes}`),
      ['WRITE 4096', 'READ 4096', 'WRITE 1048576', 'READ 1048576'],
    );
    for (const p of result.points) {
      checkPoint(p);
      assert.equal(p.depth, 4);
      assert.equal(p.prepared, true);
    }
    // Default batch: as many blocks as keep 4 transfers on disjoint parts of the 8 MiB pool, at most 32.
    assert.equal(result.points[0]!.batch, 32);
    assert.equal(result.points[2]!.batch, 2);
    const chart = readFileSync(svg, 'utf8');
    assert.match(chart, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.match(chart, /GB\/s/);
    assert.match(r.stdout, /^\| op +\| path +\| block +\| batch \| depth \| rails \| +GB\/s \| +ops\/s \| lat p50 ms \| lat p99 ms \|/m);
    assert.equal(r.stdout.split('\n').filter((l) => /^\| (READ|WRITE) /.test(l)).length, 4);
    assert.match(r.stdout, /idle event-loop delay: p50 [\d.]+ ms, p99 [\d.]+ ms/);
  });

  test('tcp, 2 rails, READ only, fast path off: large blocks striped over both rails', async () => {
    const json = join(dir, 'tcp.json');
    const r = await bench([
      '--provider',
      'tcp',
      '--rails',
      '2',
      '--op',
      'READ',
      '--block-sizes',
      '64K,1M',
      '--duration',
      '0.2',
      '--pool',
      '8M',
      '--fast-path',
      'off',
      '--json',
      json,
      '--no-progress',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const result = readJson(json);
    assert.equal(result.provider, 'tcp;ofi_rxm');
    assert.equal(result.rails, 2);
    assert.equal(result.options.fastPath, false);
    assert.deepEqual(
      result.points.map((p) => `${p.op} ${p.blockBytes}`),
      ['READ 65536', 'READ 1048576'],
    );
    for (const p of result.points) {
      checkPoint(p);
      assert.equal(p.path, 'fabric');
    }
    assert.equal(result.points[1]!.rails, 2, '1 MiB blocks are above the stripe threshold');
  });

  test('--latency: one 4K READ at a time for --iters transfers; --no-prepared; PNG chart', async () => {
    const json = join(dir, 'lat.json');
    const png = join(dir, 'lat.png');
    const r = await bench([
      '--provider',
      'shm',
      '--latency',
      '--iters',
      '50',
      '--pool',
      '1M',
      '--no-prepared',
      '--json',
      json,
      '--chart',
      png,
      '--no-progress',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const [p, ...rest] = readJson(json).points;
    assert.equal(rest.length, 0);
    checkPoint(p!);
    assert.deepEqual([p!.op, p!.blockBytes, p!.batch, p!.depth, p!.transfers, p!.prepared], ['READ', 4096, 1, 1, 50, false]);
    assert.deepEqual([...readFileSync(png).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  });

  test('standalone target by address: --target --listen, then --connect from another process', async () => {
    const target = spawn(process.execPath, [CLI, 'bench', '--target', '--listen', '127.0.0.1:0', '--provider', 'tcp', '--pool', '4M'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((resolve) => target.once('exit', (code) => resolve(code)));
    let err = '';
    target.stderr.on('data', (d: Buffer) => (err += d));
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let out = '';
        target.stdout.on('data', (d: Buffer) => {
          out += d;
          const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
          if (m) resolve(Number(m[1]));
        });
        target.once('exit', (code) => reject(new Error(`target exited (${code}) before listening: ${err}`)));
      });
      const json = join(dir, 'connect.json');
      const r = await bench([
        '--connect',
        `127.0.0.1:${port}`,
        '--provider',
        'tcp',
        '--pool',
        '4M',
        '--block-sizes',
        '64K',
        '--op',
        'WRITE',
        '--iters',
        '20',
        '--json',
        json,
        '--no-progress',
      ]);
      assert.equal(r.code, 0, r.stderr);
      const result = readJson(json);
      assert.equal(result.target, `127.0.0.1:${port}`);
      assert.equal(result.points.length, 1);
      checkPoint(result.points[0]!);
      assert.equal(result.points[0]!.transfers, 20);
      // The initiator said done: the target closes its agent and exits on its own.
      assert.equal(await exited, 0, err);
    } finally {
      if (target.exitCode === null) target.kill();
    }
  });

  test('bad options exit non-zero with a clear message, before any process is forked', async () => {
    const cases: [string[], RegExp][] = [
      [['--op', 'SEND'], /--op must be READ, WRITE or both.*'SEND'/],
      [['--block-sizes', '4K,0'], /block size must be positive, not '0'/],
      [['--pool', '1M', '--block-sizes', '1M', '--batch', '4'], /pool \(1M\) is smaller than one batch of 4 × 1M blocks/],
    ];
    const runs = await Promise.all(cases.map(([args]) => bench([...args, '--no-progress'])));
    for (const [i, [args, message]] of cases.entries()) {
      const r = runs[i]!;
      assert.notEqual(r.code, 0, `${args.join(' ')} should fail`);
      assert.match(r.stderr, /^kvfabric: KVF_ERR_INVALID_ARGUMENT: bench: /, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
    }
    const refused = await bench(['--connect', '127.0.0.1:1', '--provider', 'tcp', '--no-progress']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /target 127\.0\.0\.1:1: .*ECONNREFUSED/);
  });
});

// The rest of the validation, in-process (each CLI start costs a second on a small machine).
describe('bench option parsing', () => {
  const invalid = (raw: RawBenchOptions, message: RegExp) =>
    assert.throws(
      () => parseBenchOptions(raw),
      (err: KvfError) => err.code === 'KVF_ERR_INVALID_ARGUMENT' && message.test(err.message),
    );

  test('sizes, lists and defaults', () => {
    assert.equal(parseSize('4K', 'x'), 4096);
    assert.equal(parseSize('64m', 'x'), 64 << 20);
    assert.equal(parseSize('1.5MiB', 'x'), 1.5 * 2 ** 20);
    assert.equal(parseSize('4096', 'x'), 4096);
    const o = parseBenchOptions({});
    assert.deepEqual(o.ops, ['WRITE', 'READ']);
    assert.equal(o.blockSizes[0], 4096);
    assert.equal(o.blockSizes.at(-1), 64 << 20);
    assert.ok(o.pool >= 256 << 20);
    assert.equal(o.depth, 4);
    assert.equal(o.duration, 2);
    assert.equal(o.prepared, true);
    assert.deepEqual(parseBenchOptions({ op: 'read,WRITE,READ', blockSizes: '1M,4K,1M' }).ops, ['READ', 'WRITE']);
    assert.deepEqual(parseBenchOptions({ blockSizes: '1M,4K,1M' }).blockSizes, [4096, 1 << 20]);
    const lat = parseBenchOptions({ latency: true });
    assert.deepEqual([lat.ops, lat.blockSizes, lat.batch, lat.depth], [['READ'], [4096], 1, 1]);
    assert.deepEqual(parseBenchOptions({ connect: '[::1]:7000' }).connect, { host: '::1', port: 7000 });
    assert.equal(parseBenchOptions({ stripeThreshold: '0' }).stripeThreshold, 0);
    assert.equal(parseBenchOptions({ fastPath: 'off' }).fastPath, false);
  });

  test('refusals', () => {
    invalid({ blockSizes: '4Q' }, /block size '4Q' is not a size/);
    invalid({ blockSizes: '' }, /is not a size/);
    invalid({ pool: '64K', blockSizes: '1M' }, /pool \(64K\) is smaller than one batch of 1 × 1M blocks/);
    invalid({ depth: '0' }, /--depth must be a positive integer/);
    invalid({ batch: '2.5' }, /--batch must be a positive integer/);
    invalid({ duration: 'soon' }, /--duration must be a positive number/);
    invalid({ duration: '0' }, /--duration must be a positive number/);
    invalid({ fastPath: 'maybe' }, /--fast-path must be on or off/);
    invalid({ chart: 'out.gif' }, /--chart must name a \.svg or \.png file/);
    invalid({ connect: 'nohost' }, /--connect must be host:port/);
    invalid({ connect: 'h:70000' }, /--connect must be host:port/);
    invalid({ listen: '0.0.0.0:1' }, /--listen is for the target/);
    invalid({ latency: true, depth: '4' }, /--latency measures one descriptor at a time/);
  });
});
