// `kvfabric serve`: the whole disaggregated stack on one machine — a prefill worker and a decode worker as
// child processes of this one, which runs the frontend. KV crosses between the two workers over the chosen
// libfabric provider exactly as it would between pods. If a worker dies the stack stops (a local tool
// should fail loudly, not limp on with fallbacks). The stack's cluster token and handle key are made here,
// fresh for each run, unless the environment gives them: only these three processes hold them.
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import { defaultLogger, type Logger } from '../fabric/logger.js';
import { frontendConfig, type ServeMode } from './config.js';
import { Frontend } from './frontend/frontend.js';
import { announce, onShutdown, type Ready } from './processes.js';

export interface LocalStackOptions {
  model?: string;
  provider: string;
  mode: ServeMode;
  /** HTTP listen address of the frontend. */
  listen: string;
  blocks?: string;
  tokensPerBlock?: string;
  kvDtype?: string;
  threads?: string;
}

export async function runLocalStack(options: LocalStackOptions, log: Logger = defaultLogger()): Promise<void> {
  const cli = process.argv[1]!;
  const shared = [
    ...(options.model ? ['--model', options.model] : []),
    '--provider', options.provider,
    ...(options.blocks ? ['--blocks', options.blocks] : []),
    ...(options.tokensPerBlock ? ['--tokens-per-block', options.tokensPerBlock] : []),
    ...(options.kvDtype ? ['--kv-dtype', options.kvDtype] : []),
    ...(options.threads ? ['--threads', options.threads] : []),
  ];
  const secrets = {
    KVF_CLUSTER_TOKEN: process.env.KVF_CLUSTER_TOKEN || randomBytes(32).toString('hex'),
    KVF_HANDLE_KEY: process.env.KVF_HANDLE_KEY || randomBytes(32).toString('hex'),
  };
  const children: ChildProcess[] = [];
  let stopping = false;
  const start = (role: 'prefill' | 'decode'): Promise<Ready> =>
    new Promise((resolve, reject) => {
      const child = fork(cli, [role, '--id', `${role}-0`, '--listen', '127.0.0.1:0', ...shared], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], env: { ...process.env, ...secrets } });
      children.push(child);
      child.once('message', (m) => resolve(m as Ready));
      child.once('exit', (code, signal) => {
        reject(new Error(`${role} worker exited during start-up (code ${code}, signal ${signal})`));
        if (!stopping) {
          log.error({ role, code, signal }, 'worker exited; stopping the local stack');
          void stop(1);
        }
      });
    });
  let frontend: Frontend | undefined;
  const stop = async (code: number): Promise<void> => {
    stopping = true;
    await frontend?.close();
    await Promise.all(
      children.map(
        (c) =>
          new Promise<void>((resolve) => {
            if (c.exitCode !== null || c.signalCode !== null) return resolve();
            c.once('exit', () => resolve());
            c.kill('SIGTERM');
          }),
      ),
    );
    process.exit(code);
  };
  try {
    const [prefill, decode] = await Promise.all([start('prefill'), start('decode')]);
    const config = frontendConfig({
      flags: { model: options.model, listen: options.listen, prefill: [prefill.address], decode: [decode.address], mode: options.mode, clusterToken: secrets.KVF_CLUSTER_TOKEN },
    });
    frontend = await Frontend.start(config, log);
    await frontend.workersReady(options.mode === 'aggregated' ? ['decode'] : ['prefill', 'decode']);
    log.info({ url: frontend.url, prefill: prefill.address, decode: decode.address, provider: options.provider, mode: options.mode, model: config.model }, 'local stack ready');
    announce({ event: 'ready', role: 'frontend', pid: process.pid, address: frontend.url });
    onShutdown(log, () => stop(0));
  } catch (err) {
    log.error({ err }, 'local stack failed to start');
    await stop(1);
  }
}
