// Keeps one worker child of `kvfabric serve` running. A worker that exits when nobody asked it to is started
// again after a backoff (first delay doubling up to a cap), so a crash loop does not spin; the hooks tell the
// caller when the worker is gone and where it listens again (a new process binds a new port). Failures in a
// row — a start that never became ready, or a worker that died before it stayed up `stableMs` — are counted,
// and after `maxFailures` of them the supervisor gives up: a worker that cannot run must fail the stack loudly,
// not be retried forever. Every wait has a deadline: a start that never announces readiness is killed, and so
// is a worker that does not exit after SIGTERM.
import type { ChildProcess } from 'node:child_process';

import type { Logger } from '../common/logger.js';
import type { Ready } from './processes.js';

export interface RestartPolicy {
  /** Delay before the first restart; doubles with each failure in a row. */
  firstDelayMs: number;
  maxDelayMs: number;
  /** A worker up this long has recovered: its next death starts the count (and the delay) afresh. */
  stableMs: number;
  /** Failures in a row after which the supervisor gives up. */
  maxFailures: number;
  /** A start that has not announced readiness by then is killed and counts as a failure. */
  startTimeoutMs: number;
  /** A worker that has not exited this long after SIGTERM is killed. */
  stopTimeoutMs: number;
}

export const DEFAULT_RESTART_POLICY: RestartPolicy = {
  firstDelayMs: 250,
  maxDelayMs: 10_000,
  stableMs: 30_000,
  maxFailures: 5,
  startTimeoutMs: 60_000,
  stopTimeoutMs: 30_000,
};

export interface SupervisorHooks {
  /** The worker is gone (its address no longer serves). */
  onDown(address: string): void;
  /** A restarted worker is ready at `address`. */
  onUp(address: string): void;
  /** Restarting failed `maxFailures` times in a row; the supervisor does nothing more. */
  onGiveUp(err: Error): void;
}

export class Supervisor {
  readonly role: 'prefill' | 'decode';
  readonly #spawn: () => ChildProcess;
  readonly #hooks: SupervisorHooks;
  readonly #log: Logger;
  readonly #policy: RestartPolicy;
  #child: ChildProcess | undefined;
  #address: string | undefined;
  #upSince = 0;
  #failures = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopping = false;

  constructor(role: 'prefill' | 'decode', spawn: () => ChildProcess, hooks: SupervisorHooks, log: Logger, policy: RestartPolicy = DEFAULT_RESTART_POLICY) {
    this.role = role;
    this.#spawn = spawn;
    this.#hooks = hooks;
    this.#log = log;
    this.#policy = policy;
  }

  /** Where the worker listens now; undefined while it is down. */
  get address(): string | undefined {
    return this.#address;
  }

  /** The first start. Not retried: a stack whose worker cannot start at all fails at once. */
  start(): Promise<Ready> {
    return this.#launch();
  }

  /** SIGTERM to the worker (even one still starting), wait for its exit; no restart after this. */
  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), this.#policy.stopTimeoutMs)));
    if ((await Promise.race([exited, late])) === 'late') {
      this.#log.error({ role: this.role, pid: child.pid, timeoutMs: this.#policy.stopTimeoutMs }, 'worker did not exit after SIGTERM; killing it');
      child.kill('SIGKILL');
      await exited;
    }
    clearTimeout(timer);
  }

  /** Forks the worker; resolves when it announces readiness, rejects if it exits (or times out) first. */
  #launch(): Promise<Ready> {
    return new Promise((resolve, reject) => {
      const child = this.#spawn();
      this.#child = child;
      let ready = false;
      let timedOut = false;
      const deadline = setTimeout(() => {
        timedOut = true;
        child.kill('SIGKILL');
      }, this.#policy.startTimeoutMs);
      child.on('message', (m: Ready) => {
        if (ready || m?.event !== 'ready') return;
        ready = true;
        clearTimeout(deadline);
        this.#address = m.address;
        this.#upSince = Date.now();
        this.#log.info({ role: this.role, pid: m.pid, address: m.address }, 'worker up');
        resolve(m);
      });
      child.once('error', (err) => {
        clearTimeout(deadline);
        if (!ready) reject(err);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(deadline);
        if (this.#child === child) this.#child = undefined;
        if (!ready) {
          const why = timedOut ? `not ready after ${this.#policy.startTimeoutMs} ms` : `code ${code}, signal ${signal}`;
          reject(new Error(`${this.role} worker exited during start-up (${why})`));
        } else this.#died(child.pid, code, signal);
      });
    });
  }

  #died(pid: number | undefined, code: number | null, signal: NodeJS.Signals | null): void {
    const address = this.#address!;
    this.#address = undefined;
    if (this.#stopping) return;
    this.#hooks.onDown(address);
    if (Date.now() - this.#upSince >= this.#policy.stableMs) this.#failures = 0;
    this.#failures++;
    this.#log.error({ role: this.role, pid, code, signal, failures: this.#failures }, 'worker exited');
    this.#retry(new Error(`${this.role} worker exited (code ${code}, signal ${signal})`));
  }

  /** Schedules the next start after the backoff, or gives up when the failures in a row reached the limit. */
  #retry(last: Error): void {
    if (this.#failures >= this.#policy.maxFailures) {
      this.#log.error({ role: this.role, failures: this.#failures, err: last.message }, 'worker keeps failing; giving up');
      this.#hooks.onGiveUp(last);
      return;
    }
    const delayMs = Math.min(this.#policy.maxDelayMs, this.#policy.firstDelayMs * 2 ** (this.#failures - 1));
    this.#log.warn({ role: this.role, delayMs }, 'restarting worker after a delay');
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      if (this.#stopping) return;
      this.#launch().then(
        (ready) => {
          if (this.#stopping) return;
          this.#log.info({ role: this.role, pid: ready.pid, address: ready.address }, 'worker restarted');
          this.#hooks.onUp(ready.address);
        },
        (err: Error) => {
          if (this.#stopping) return;
          this.#failures++;
          this.#log.error({ role: this.role, failures: this.#failures, err: err.message }, 'worker restart failed');
          this.#retry(err);
        },
      );
    }, delayMs);
  }
}
