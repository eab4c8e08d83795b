// The initiator's handle on its target: forks one (the same CLI entry, `bench --target`, metadata over IPC)
// or connects to a standalone one by address (--connect, metadata over TCP). Either way it yields the
// target's hello and a done() that lets the target close and exit.
import { fork } from 'node:child_process';
import { connect } from 'node:net';

import { formatSize, type BenchOptions } from './options.js';
import { isIntroduced, isTargetHello, readFrames, writeFrame, type TargetHello } from './wire.js';

export interface TargetHandle {
  hello: TargetHello;
  /** 'fork' or the host:port connected to. */
  where: string;
  /** Hands the target this agent's metadata (base64) and waits until it has loaded it. */
  introduce(metadata: string): Promise<void>;
  done(): Promise<void>;
}

/** Waits for the target's answer to an introduction; `send` sends it, `onMessage` subscribes to what comes back. */
function introduction(send: () => void, onMessage: (f: (m: unknown) => void) => () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`bench: the target did not load this agent's metadata within ${HELLO_TIMEOUT_MS / 1000} s`));
    }, HELLO_TIMEOUT_MS);
    const off = onMessage((m) => {
      if (!isIntroduced(m)) return;
      clearTimeout(timer);
      off();
      if (m.error) reject(new Error(`bench: the target refused this agent's metadata: ${m.error}`));
      else resolve();
    });
    send();
  });
}

// Opening an agent and registering 256 MiB takes well under a second; a minute means something is wrong.
const HELLO_TIMEOUT_MS = 60_000;

export function openTarget(options: BenchOptions): Promise<TargetHandle> {
  return options.connect ? connectTarget(options) : forkTarget(options);
}

function forkTarget(options: BenchOptions): Promise<TargetHandle> {
  const args = ['bench', '--target', '--pool', String(options.pool)];
  if (options.provider !== undefined) args.push('--provider', options.provider);
  if (options.rails !== undefined) args.push('--rails', String(options.rails));
  if (options.fastPath !== undefined) args.push('--fast-path', options.fastPath ? 'on' : 'off');
  args.push('--shared-pool', options.sharedPool === 'auto' ? 'auto' : options.sharedPool ? 'on' : 'off');
  if (options.hugepages) args.push('--hugepages');
  args.push('--busy-poll', String(options.busyPollUs));
  args.push('--device', options.device.target);
  if (options.fabricAddress !== undefined) args.push('--fabric-address', options.fabricAddress);
  // process.argv[1] is this CLI (dist/cli/main.js, or src/cli/main.ts under tsx: execArgv carries the loader).
  const child = fork(process.argv[1]!, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill();
      reject(new Error(`bench: the target process ${why}`));
    };
    const timer = setTimeout(() => fail(`sent no metadata within ${HELLO_TIMEOUT_MS / 1000} s`), HELLO_TIMEOUT_MS);
    const onExit = (code: number | null, signal: string | null) => fail(`exited (${signal ?? `code ${code}`}) before sending its metadata`);
    child.once('exit', onExit);
    child.once('error', (err) => fail(`could not start: ${err.message}`));
    child.once('message', (m) => {
      clearTimeout(timer);
      child.off('exit', onExit);
      if (!isTargetHello(m)) return fail('sent something other than its metadata');
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      resolve({
        hello: m,
        where: 'fork',
        introduce: (metadata) =>
          introduction(
            () => child.send({ cmd: 'peer', metadata }),
            (f) => {
              child.on('message', f);
              return () => child.off('message', f);
            },
          ),
        async done() {
          if (child.connected) child.send({ cmd: 'done' });
          // It closes its agent and exits; don't leave a stuck one behind.
          const kill = setTimeout(() => child.kill('SIGKILL'), 15_000);
          await exited;
          clearTimeout(kill);
        },
      });
    });
  });
}

function connectTarget(options: BenchOptions): Promise<TargetHandle> {
  const { host, port } = options.connect!;
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const timer = setTimeout(() => socket.destroy(new Error(`no metadata within ${HELLO_TIMEOUT_MS / 1000} s`)), HELLO_TIMEOUT_MS);
    let got = false;
    socket.once('error', (err) => {
      clearTimeout(timer);
      if (!got) reject(new Error(`bench: target ${where}: ${err.message}`));
    });
    socket.once('close', () => {
      clearTimeout(timer);
      if (!got) reject(new Error(`bench: target ${where} closed the connection before sending its metadata`));
    });
    const listeners = new Set<(m: unknown) => void>();
    readFrames(socket, (m) => {
      if (got) {
        for (const f of listeners) f(m);
        return;
      }
      got = true;
      clearTimeout(timer);
      if (!isTargetHello(m)) {
        socket.destroy();
        reject(new Error(`bench: ${where} did not answer with a bench target's metadata`));
        return;
      }
      if (m.poolBytes < options.pool) {
        process.stderr.write(
          `kvfabric bench: the target's pool (${formatSize(m.poolBytes)}) is smaller than --pool (${formatSize(options.pool)}); using ${formatSize(m.poolBytes)}\n`,
        );
      }
      socket.on('error', () => {});
      resolve({
        hello: m,
        where,
        introduce: (metadata) =>
          introduction(
            () => writeFrame(socket, { cmd: 'peer', metadata }),
            (f) => {
              listeners.add(f);
              return () => listeners.delete(f);
            },
          ),
        done: () =>
          new Promise<void>((r) => {
            writeFrame(socket, { cmd: 'done' });
            socket.end(() => r());
          }),
      });
    });
  });
}
