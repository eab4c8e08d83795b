// What the trust boundary (docs/security.md) costs, against the build before it, in alternating rounds:
// - serving: `kvfabric serve` of each build (frontend, prefill and decode processes; the KV over the tcp
//   provider as between pods, or by the same-host path with --fast-path on) under streamed chat load at each
//   concurrency: TTFT and ITL p50 (this build: token proofs, signed handles, grants made and revoked per
//   request, cleared blocks);
// - transfer: `kvfabric bench` 1 MiB READs between two processes over tcp (random keys, the region-table
//   checks, the connection-recovery bookkeeping).
// The per-request cost of grants alone is benchmarks/grant-cost.ts. Prints tables and writes JSON.
//
//   node --import tsx benchmarks/protection-cost.ts --baseline <checkout of the build before, built> \
//     [--rounds 3] [--concurrency 1,16] [--max-tokens 16] [--min-requests 8] [--fast-path off|on] [--mode pull|push|aggregated] [--model path]
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { loadLevel, streamOne, type LevelResult } from './lib/load.js';
import { describeMachine } from './lib/machine.js';

const here = dirname(fileURLToPath(import.meta.url));
const { values } = parseArgs({
  options: {
    baseline: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '1,16' },
    'max-tokens': { type: 'string', default: '16' },
    'min-requests': { type: 'string', default: '8' },
    'fast-path': { type: 'string', default: 'off' },
    mode: { type: 'string', default: 'pull' },
    model: { type: 'string' },
    out: { type: 'string', default: join(here, 'out', 'protection-cost.json') },
  },
});
if (!values.baseline) throw new Error('--baseline <dir>: a checkout of the build to compare against, with dist/ and the addon built');
const builds = { before: resolve(values.baseline), protected: resolve(here, '..') };
const rounds = Number(values.rounds);
const levels = values.concurrency!.split(',').map(Number);
const maxTokens = Number(values['max-tokens']);
const minRequests = Number(values['min-requests']);
const env = { ...process.env, KVF_LOG_LEVEL: 'warn', KVF_FAST_PATH: values['fast-path'] === 'on' ? '1' : '0' };

type Build = keyof typeof builds;
interface ServingRow extends LevelResult {
  build: Build;
  round: number;
}
interface ReadRow {
  build: Build;
  round: number;
  gbps: number;
}

/** Runs `kvfabric serve` of a build until it is ready; resolves with its URL and a stop function. */
function serve(build: Build): Promise<{ url: string; stop: () => Promise<void> }> {
  const args = [
    join(builds[build], 'dist', 'cli', 'main.js'),
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--mode',
    values.mode!,
    ...(values.model ? ['--model', values.model] : []),
  ];
  const child = spawn(process.execPath, args, { env, stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return new Promise((resolveReady, reject) => {
    void exited.then(() => reject(new Error(`kvfabric serve (${build}) exited before it was ready`)));
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!line.includes('"ready"')) return;
      const ready = JSON.parse(line) as { role: string; address: string };
      if (ready.role !== 'frontend') return;
      resolveReady({
        url: ready.address,
        stop: async () => {
          child.kill('SIGTERM');
          await exited;
        },
      });
    });
  });
}

async function servingRound(build: Build, round: number): Promise<ServingRow[]> {
  const stack = await serve(build);
  try {
    const models = (await (await fetch(`${stack.url}/v1/models`)).json()) as { data: { id: string }[] };
    const target = { url: stack.url, modelName: models.data[0]!.id, maxTokens };
    for (let i = 0; i < 2; i++) await streamOne(target, i); // warm-up: connections, caches
    const rows: ServingRow[] = [];
    for (const c of levels) rows.push({ build, round, ...(await loadLevel(target, c, Math.max(minRequests, 2 * c))) });
    return rows;
  } finally {
    await stack.stop();
  }
}

function readRound(build: Build, round: number): Promise<ReadRow> {
  const json = join(mkdtempSync(join(tmpdir(), 'kvf-pc-')), 'read.json');
  const args = [
    join(builds[build], 'dist', 'cli', 'main.js'),
    'bench',
    '--provider',
    'tcp',
    '--op',
    'READ',
    '--block-sizes',
    '1M',
    '--duration',
    '3',
    '--fast-path',
    'off',
    '--json',
    json,
  ];
  return new Promise((resolveRow, reject) =>
    execFile(process.execPath, args, { env }, (err) => {
      if (err) return reject(err);
      const { points } = JSON.parse(readFileSync(json, 'utf8')) as { points: { gbps: number }[] };
      resolveRow({ build, round, gbps: points[0]!.gbps });
    }),
  );
}

const serving: ServingRow[] = [];
const reads: ReadRow[] = [];
for (let round = 0; round < rounds; round++) {
  // Alternate which build goes first, so drift in the machine does not favour one.
  const order: Build[] = round % 2 === 0 ? ['before', 'protected'] : ['protected', 'before'];
  for (const build of order) {
    serving.push(...(await servingRound(build, round)));
    reads.push(await readRound(build, round));
    process.stderr.write(`round ${round + 1}/${rounds}: ${build} done\n`);
  }
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
const f = (x: number, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const path = values['fast-path'] === 'on' ? 'same-host fast path' : 'tcp provider';
console.log(
  `\nServing (kvfabric serve --mode ${values.mode}, KV over the ${path}, max_tokens ${maxTokens}, greedy, streamed): median of ${rounds} alternating rounds`,
);
console.log(
  '| concurrency | TTFT p50 ms before | TTFT p50 ms protected | ratio | ITL p50 ms before | ITL p50 ms protected | ratio | per-round TTFT p50 (before / protected) |',
);
console.log('|---|---|---|---|---|---|---|---|');
const summary = levels.map((c) => {
  const of = (build: Build, key: 'ttftP50Ms' | 'itlP50Ms') => serving.filter((r) => r.build === build && r.concurrency === c).map((r) => r[key]);
  const row = {
    concurrency: c,
    ttftBefore: median(of('before', 'ttftP50Ms')),
    ttftProtected: median(of('protected', 'ttftP50Ms')),
    itlBefore: median(of('before', 'itlP50Ms')),
    itlProtected: median(of('protected', 'itlP50Ms')),
  };
  const rounds = of('before', 'ttftP50Ms')
    .map((b, i) => `${f(b)} / ${f(of('protected', 'ttftP50Ms')[i]!)}`)
    .join(', ');
  console.log(
    `| ${c} | ${f(row.ttftBefore)} | ${f(row.ttftProtected)} | ${f(row.ttftProtected / row.ttftBefore, 2)} | ${f(row.itlBefore)} | ${f(row.itlProtected)} | ${f(row.itlProtected / row.itlBefore, 2)} | ${rounds} |`,
  );
  return row;
});
const gb = (build: Build) => reads.filter((r) => r.build === build).map((r) => r.gbps);
console.log(`\nkvfabric bench: 1 MiB READ over tcp between two processes, median of ${rounds} alternating rounds`);
console.log('| GB/s before | GB/s protected | ratio | per round (before / protected) |');
console.log('|---|---|---|---|');
console.log(
  `| ${f(median(gb('before')), 2)} | ${f(median(gb('protected')), 2)} | ${f(median(gb('protected')) / median(gb('before')), 2)} | ${gb('before')
    .map((b, i) => `${f(b, 2)} / ${f(gb('protected')[i]!, 2)}`)
    .join(', ')} |`,
);
mkdirSync(dirname(values.out!), { recursive: true });
writeFileSync(values.out!, JSON.stringify({ machine: describeMachine(), builds, fastPath: values['fast-path'], maxTokens, summary, serving, reads }, null, 2));
console.log(`\nwrote ${values.out}`);
