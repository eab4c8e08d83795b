// Lifecycle: what happens to agents, their threads and their transfers when things end other than by a
// tidy close(). Everything that could crash or hang runs in a child process (test/fixtures/lifecycle/*),
// under a timeout, and must end with the expected exit code, no signal (SIGSEGV / SIGABRT are failures),
// and the markers it prints on stdout:
//   a. close() with many large transfers in flight, also after the peer process was killed with SIGKILL;
//   b. unclosed agents dropped and garbage collected: finalizers run, fds and threads come back;
//   c. an agent in a worker thread that exits, returns, or is terminated mid-transfer;
//   d. process.exit() mid-transfer, an idle open agent at the end of the script, an uncaught exception.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const PROVIDERS = ['tcp', 'shm'] as const;

interface Run {
  args: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** Runs test/fixtures/lifecycle/<name> with tsx; SIGKILLs it after timeoutMs. */
function runFixture(name: string, args: string[] = [], options: { timeoutMs?: number; nodeArgs?: string[] } = {}): Promise<Run> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  const file = fileURLToPath(new URL(`./fixtures/lifecycle/${name}`, import.meta.url));
  const argv = [...(options.nodeArgs ?? []), '--import', 'tsx', file, ...args];
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, KVF_LOG_LEVEL: process.env.KVF_LOG_LEVEL ?? 'warn' },
    });
    live.add(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      live.delete(child);
      resolve({ args: [name, ...args], code, signal, stdout, stderr, timedOut, ms: performance.now() - started });
    });
  });
}

function describeRun(r: Run): string {
  const tail = (s: string) => s.split('\n').slice(-25).join('\n');
  return (
    `\n  command: ${r.args.join(' ')}` +
    `\n  exit: code ${r.code}, signal ${r.signal}${r.timedOut ? ' (killed after the timeout: it hung)' : ''}, ${Math.round(r.ms)} ms` +
    (r.code === 13 ? ' (13: the event loop ran empty while a top-level await was pending; nothing kept the process alive)' : '') +
    `\n  --- stdout ---\n${tail(r.stdout)}\n  --- stderr ---\n${tail(r.stderr)}`
  );
}

/** Ended by itself, within its timeout, with `code` and no signal. */
function assertExit(r: Run, code: number): void {
  assert.equal(r.timedOut, false, `hung${describeRun(r)}`);
  assert.equal(r.signal, null, `killed by ${r.signal}${describeRun(r)}`);
  assert.equal(r.code, code, `exit code ${r.code}, expected ${code}${describeRun(r)}`);
  assert.doesNotMatch(r.stderr, /Segmentation fault|Aborted|terminate called|FATAL ERROR/, `crash report on stderr${describeRun(r)}`);
}

/** The rest of the first stdout line starting with `prefix ` (undefined if none). */
function marker(r: Run, prefix: string): string | undefined {
  const line = r.stdout.split('\n').find((l) => l === prefix || l.startsWith(`${prefix} `));
  return line === undefined ? undefined : line.slice(prefix.length).trim();
}

function needMarker(r: Run, prefix: string): string {
  const m = marker(r, prefix);
  assert.notEqual(m, undefined, `no '${prefix}' line on stdout${describeRun(r)}`);
  return m!;
}

/** key=value pairs of a marker ("ms=12 peak=3"). */
function fields(text: string): Record<string, number> {
  return Object.fromEntries([...text.matchAll(/(\w+)=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
}

/** SETTLED {"resolved":n,"KVF_ERR_CLOSED":m}: outcome counts; every key must be allowed and they must add up. */
function settled(r: Run, total: number, allowed: readonly string[]): Record<string, number> {
  const counts = JSON.parse(needMarker(r, 'SETTLED')) as Record<string, number>;
  for (const key of Object.keys(counts)) assert.ok(allowed.includes(key), `a transfer settled as ${key}${describeRun(r)}`);
  assert.equal(
    Object.values(counts).reduce((a, b) => a + b, 0),
    total,
    `not every transfer settled${describeRun(r)}`,
  );
  return counts;
}

describe('a. close() with transfers in flight', { concurrency: 2 }, () => {
  for (const provider of PROVIDERS) {
    test(
      `${provider}: 32 x 8 MiB WRITEs, close() right after posting: all resolve, close resolves, the process exits by itself`,
      { timeout: 60_000 },
      async () => {
        const r = await runFixture('close-inflight.ts', [provider, '10000', '32', '8', 'write']);
        assertExit(r, 0);
        assert.equal(fields(needMarker(r, 'POSTED')).inFlight, 32);
        const counts = settled(r, 32, ['resolved', 'KVF_ERR_CLOSED']);
        assert.equal(counts.resolved, 32, `with a 10 s close timeout every transfer finishes${describeRun(r)}`);
        assert.ok(fields(needMarker(r, 'CLOSED')).ms < 10_000, describeRun(r));
        needMarker(r, 'DONE');
        assert.equal(needMarker(r, 'EXIT'), '0');
      },
    );

    test(`${provider}: 32 x 8 MiB READs and WRITEs, closeTimeoutMs 0: each resolves or rejects with KVF_ERR_CLOSED`, { timeout: 60_000 }, async () => {
      const r = await runFixture('close-inflight.ts', [provider, '0', '32', '8', 'mixed']);
      assertExit(r, 0);
      settled(r, 32, ['resolved', 'KVF_ERR_CLOSED']);
      needMarker(r, 'DONE');
    });

    // libfabric 1.17's tcp provider completes a READ twice when its endpoint is closed while the READ's response
    // is arriving, the second time with a null context that ofi_rxm dereferences: close() crashed (SIGSEGV in
    // fi_close) in about half of these runs on a loaded machine, until closing let in-flight READs finish first
    // (Rail::Quiesce). A few runs, since one run is a coin toss.
    test(`${provider}: 32 x 8 MiB READs, closeTimeoutMs 0, 3 runs: each resolves or rejects with KVF_ERR_CLOSED`, { timeout: 90_000 }, async () => {
      for (let run = 0; run < 3; run++) {
        const r = await runFixture('close-inflight.ts', [provider, '0', '32', '8', 'read']);
        assertExit(r, 0);
        settled(r, 32, ['resolved', 'KVF_ERR_CLOSED']);
        needMarker(r, 'DONE');
      }
    });

    // 8 MiB transfers go through the rail threads, 16 KiB ones through the express lane (the JS thread) on tcp.
    for (const [order, mib] of [
      ['kill-then-close', '8'],
      ['dead-then-post', '8'],
      ['kill-then-close', '0.015625'],
      ['dead-then-post', '0.015625'],
    ] as const) {
      const what = order === 'kill-then-close' ? 'peer process killed (SIGKILL) mid-transfer' : 'peer process killed before the transfers were posted';
      const size = mib === '8' ? '8 MiB' : provider === 'tcp' ? '16 KiB (express lane)' : '16 KiB';
      test(`${provider}: ${size}: ${what}: close() resolves within closeTimeoutMs, every transfer settles`, { timeout: 60_000 }, async () => {
        const r = await runFixture('kill-peer.ts', [provider, '1000', '32', mib, order]);
        assertExit(r, 0);
        needMarker(r, 'KILLED');
        settled(r, 32, ['resolved', 'KVF_ERR_CLOSED', 'KVF_ERR_PROVIDER']);
        const ms = fields(needMarker(r, 'CLOSED')).ms!;
        assert.ok(ms <= 1000 + 3000, `close() took ${ms} ms with closeTimeoutMs 1000${describeRun(r)}`);
        needMarker(r, 'DONE');
      });
    }
  }
});

describe('b. garbage collection of unclosed agents', { concurrency: 1 }, () => {
  for (const provider of PROVIDERS) {
    // tcp agents cost ~70 MB of provider buffers each, so fewer of them.
    const count = provider === 'tcp' ? 24 : 50;
    test(`${provider}: ${count} dropped agents are finalized and give back their fds and threads`, { timeout: 60_000 }, async () => {
      const r = await runFixture('gc.ts', [provider, String(count)], { nodeArgs: ['--expose-gc'], timeoutMs: 50_000 });
      assertExit(r, 0);
      const created = fields(needMarker(r, 'CREATED'));
      const finalized = Number(/^(\d+)\//.exec(needMarker(r, 'FINALIZED'))?.[1]);
      assert.ok(finalized >= Math.ceil(count * 0.9), `only ${finalized}/${count} agents were collected${describeRun(r)}`);
      const fds = fields(needMarker(r, 'FDS'));
      const threads = fields(needMarker(r, 'THREADS'));
      assert.ok(fds.after! <= fds.baseline! + 2, `fds: ${JSON.stringify(fds)} (created: ${JSON.stringify(created)})${describeRun(r)}`);
      assert.ok(threads.after! <= threads.baseline! + 2, `threads: ${JSON.stringify(threads)}${describeRun(r)}`);
      needMarker(r, 'DONE');
    });
  }
});

describe('b2. an agent with transfers in flight is not collected', { concurrency: 1 }, () => {
  for (const provider of PROVIDERS) {
    test(`${provider}: 200 WRITEs from an agent nothing else refers to all complete under forced GC`, { timeout: 60_000 }, async () => {
      const r = await runFixture('gc-pending.ts', [provider], { nodeArgs: ['--expose-gc'], timeoutMs: 50_000 });
      assertExit(r, 0);
      assert.equal(needMarker(r, 'WRITES'), '200');
      needMarker(r, 'DONE');
    });
  }
});

describe('c. agents in worker threads', { concurrency: 2 }, () => {
  const scenarios = [
    ['exit', 0, 'process.exit(0) in the worker with its agent open and WRITEs in flight'],
    ['return', 0, 'the worker returns with its agent open and idle (and must end by itself)'],
    ['terminate', 1, 'worker.terminate() while its WRITEs to the main thread are in flight'],
    ['serve', 1, 'worker.terminate() while the main thread READs from its memory'],
  ] as const;
  for (const provider of PROVIDERS) {
    for (const [scenario, workerCode, what] of scenarios) {
      test(`${provider}: ${what}; the main thread's agent keeps working`, { timeout: 60_000 }, async () => {
        const r = await runFixture('worker-main.ts', [provider, scenario]);
        assertExit(r, 0);
        assert.equal(marker(r, 'WORKER-ERROR'), undefined, describeRun(r));
        const worker = needMarker(r, 'WORKER');
        assert.match(worker, new RegExp(`^${scenario} code=${workerCode}\\b`), describeRun(r));
        needMarker(r, 'ROUNDTRIP before');
        needMarker(r, `ROUNDTRIP after ${scenario}`);
        needMarker(r, 'DONE');
        assert.equal(needMarker(r, 'EXIT'), '0');
      });
    }
  }
});

describe('d. process exit with open agents', { concurrency: 2 }, () => {
  for (const [when, code] of [
    ['sync', 0],
    ['tick', 0],
    ['timer', 0],
    ['timer', 7],
  ] as const) {
    test(
      `process.exit(${code}) ${when === 'sync' ? 'right after posting' : `on the next ${when}`}, tcp and shm transfers in flight`,
      { timeout: 60_000 },
      async () => {
        const r = await runFixture('exit-midflight.ts', [when, String(code)]);
        assertExit(r, code);
        assert.ok(fields(needMarker(r, 'EXITING')).inFlight! > 0, `nothing was in flight at exit${describeRun(r)}`);
        assert.equal(needMarker(r, 'EXIT'), String(code));
      },
    );
  }

  for (const [variant, what] of [
    ['idle', 'after traffic both ways, notifications, a listener and an unread iterator'],
    ['closing', 'with close() started and not awaited'],
    ['fresh', 'that never did anything'],
  ] as const) {
    test(`open tcp and shm agents ${what} do not keep the process alive`, { timeout: 60_000 }, async () => {
      const r = await runFixture('idle-exit.ts', [variant], { timeoutMs: 20_000 });
      assertExit(r, 0);
      needMarker(r, 'IDLE');
      assert.equal(needMarker(r, 'EXIT'), '0');
    });
  }

  for (const [how, what, message] of [
    ['throw', 'an uncaught exception', /boom-uncaught/],
    ['listener', "an exception thrown by a 'notification' listener", /boom-listener/],
    ['rejection', 'an unhandled transfer rejection', /KVF_ERR_UNKNOWN_PEER/],
  ] as const) {
    test(`${what} with tcp and shm transfers in flight: exit code 1, no signal`, { timeout: 60_000 }, async () => {
      const r = await runFixture('uncaught.ts', [how]);
      assertExit(r, 1);
      needMarker(r, 'THROWING');
      assert.match(r.stderr, message, describeRun(r));
    });
  }
});
