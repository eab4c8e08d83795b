// `kvfabric serve`: the whole disaggregated stack on one machine — a prefill worker and a decode worker as
// child processes of this one, which runs the frontend. KV crosses between the two workers over the chosen
// libfabric provider exactly as it would between pods. A worker that dies is restarted with backoff
// (supervisor.ts) at a new port, and the frontend's router follows: the dead address leaves it at once, so
// meanwhile requests fall back to local prefill (prefill down) or get KVF_ERR_NO_WORKER (decode down) instead
// of waiting on a dead port. A worker that keeps failing to come back stops the stack with exit 1: a local tool
// should fail loudly, not limp on forever. The stack's cluster token and handle key are made here, fresh for
// each run, unless the environment gives them: only these three processes (and the restarted workers, with the
// same environment) hold them. The workers inherit this process's environment, OTEL_* included: with an OTLP
// endpoint configured, each of the three exports its own spans (common/tracing.ts), one trace per request.
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';

import { KvfError } from '../common/errors.js';
import { defaultLogger, type Logger } from '../common/logger.js';
import { initTracing, shutdownTracing } from '../common/tracing.js';
import { frontendConfig, type ServeMode } from './config.js';
import { TINY_MODEL_WARNING, fetchDefaultModel, isTinyModel } from './default-model.js';
import { Frontend } from './frontend/frontend.js';
import { announce, onShutdown } from './processes.js';
import { DEFAULT_RESTART_POLICY, Supervisor, type RestartPolicy } from './supervisor.js';

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
  maxBatchSequences?: string;
  maxStepTokens?: string;
  prefixCache?: string;
  router?: string;
}

export async function runLocalStack(options: LocalStackOptions, log: Logger = defaultLogger()): Promise<void> {
  const cli = process.argv[1]!;
  await initTracing('frontend', log);
  options = { ...options, model: options.model ?? (await fetchDefaultModel()) };
  if (isTinyModel(options.model!)) log.warn({ model: options.model }, TINY_MODEL_WARNING);
  const shared = [
    ...(options.model ? ['--model', options.model] : []),
    '--provider',
    options.provider,
    ...(options.blocks ? ['--blocks', options.blocks] : []),
    ...(options.tokensPerBlock ? ['--tokens-per-block', options.tokensPerBlock] : []),
    ...(options.kvDtype ? ['--kv-dtype', options.kvDtype] : []),
    ...(options.threads ? ['--threads', options.threads] : []),
    ...(options.maxBatchSequences ? ['--max-batch-sequences', options.maxBatchSequences] : []),
    ...(options.maxStepTokens ? ['--max-step-tokens', options.maxStepTokens] : []),
    ...(options.prefixCache ? ['--prefix-cache', options.prefixCache] : []),
  ];
  const policy = restartPolicy();
  const secrets = {
    KVF_CLUSTER_TOKEN: process.env.KVF_CLUSTER_TOKEN || randomBytes(32).toString('hex'),
    KVF_HANDLE_KEY: process.env.KVF_HANDLE_KEY || randomBytes(32).toString('hex'),
  };
  const spawn = (role: 'prefill' | 'decode') => (): ChildProcess =>
    fork(cli, [role, '--id', `${role}-0`, '--listen', '127.0.0.1:0', ...shared], {
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
      env: { ...process.env, ...secrets },
    });
  let frontend: Frontend | undefined;
  let stopping: Promise<void> | undefined;
  // The router follows the supervisors: a dead worker's address leaves it at once (no request waits on a
  // port nobody listens on), a restarted one joins at its new port.
  const route = (s: Supervisor): void => {
    const router = frontend?.router;
    if (!router || stopping) return;
    for (const w of router.workers()) if (w.role === s.role && w.address !== s.address) router.remove(w.address, 'worker process exited');
    if (s.address) router.upsert(s.address, s.role, 'static');
  };
  const supervise = (role: 'prefill' | 'decode'): Supervisor => {
    const s: Supervisor = new Supervisor(
      role,
      spawn(role),
      {
        onDown: () => route(s),
        onUp: () => route(s),
        onGiveUp: () => void stop(1),
      },
      log,
      policy,
    );
    return s;
  };
  const workers = [supervise('prefill'), supervise('decode')];
  const stop = (code: number): Promise<void> =>
    (stopping ??= (async () => {
      await frontend?.close();
      await Promise.all(workers.map((w) => w.stop()));
      await shutdownTracing();
      process.exit(code);
    })());
  try {
    const [prefill, decode] = await Promise.all(workers.map((w) => w.start()));
    // No addresses in the configuration: route() gives the router the workers' current ones (one may have
    // died and restarted since it announced itself).
    const config = frontendConfig({
      flags: {
        model: options.model,
        listen: options.listen,
        prefill: [],
        decode: [],
        mode: options.mode,
        clusterToken: secrets.KVF_CLUSTER_TOKEN,
        ...(options.router ? { router: options.router } : {}),
      },
    });
    frontend = await Frontend.start(config, log);
    workers.forEach(route);
    await frontend.workersReady(options.mode === 'aggregated' ? ['decode'] : ['prefill', 'decode']);
    log.info(
      {
        url: frontend.url,
        prefill: prefill!.address,
        decode: decode!.address,
        prefillPid: prefill!.pid,
        decodePid: decode!.pid,
        provider: options.provider,
        mode: options.mode,
        model: config.model,
      },
      'local stack ready',
    );
    announce({ event: 'ready', role: 'frontend', pid: process.pid, address: frontend.url });
    onShutdown(log, () => stop(0));
  } catch (err) {
    log.error({ err }, 'local stack failed to start');
    await stop(1);
  }
}

/** KVF_RESTART_DELAY_MS sets the first restart delay (tests hold a worker down long enough to observe it). */
function restartPolicy(env: NodeJS.ProcessEnv = process.env): RestartPolicy {
  const raw = env.KVF_RESTART_DELAY_MS;
  if (raw === undefined || raw === '') return DEFAULT_RESTART_POLICY;
  const firstDelayMs = Number(raw);
  if (!Number.isInteger(firstDelayMs) || firstDelayMs < 1)
    throw new KvfError('KVF_ERR_BAD_CONFIG', `KVF_RESTART_DELAY_MS must be a positive integer (ms), got '${raw}'`);
  return { ...DEFAULT_RESTART_POLICY, firstDelayMs, maxDelayMs: Math.max(firstDelayMs, DEFAULT_RESTART_POLICY.maxDelayMs) };
}
