// What the Agent keeps for work in flight: a posted transfer waiting for its completion (Pending, and what its
// timeout does), and the hold that keeps the process and the agent itself alive until that work ends.
import { KvfError } from '../common/errors.js';
import type { Posted, TransferReport } from './transfer-report.js';

export interface Pending extends Posted {
  resolve(report: TransferReport): void;
  reject(err: KvfError): void;
  timer?: NodeJS.Timeout;
  /** Holds the addon's ref (the process stays alive for it); not taken when the transfer settled in the post call. */
  held: boolean;
}

/**
 * After `timeoutMs`, rejects the caller's promise with KVF_ERR_TIMEOUT (naming `at`, where the peer listens, when
 * known); the transfer stays pending, and its later completion or failure only settles the error's `settled`.
 */
export function armTimeout(p: Pending, timeoutMs: number, reject: (err: KvfError) => void, at: () => string | undefined): void {
  p.timer = setTimeout(() => {
    // The caller hears of the timeout now, and of the abandoned operations' end through `settled`.
    let ended!: () => void;
    const settled = new Promise<void>((r) => (ended = r));
    p.resolve = () => ended();
    p.reject = () => ended();
    const where = at();
    reject(
      new KvfError('KVF_ERR_TIMEOUT', `${p.op} to '${p.peer}'${where ? ` at ${where}` : ''} did not complete within ${timeoutMs} ms`, {
        peer: p.peer,
        settled,
      }),
    );
  }, timeoutMs);
}

// While anything is pending an agent must stay reachable: its transfers' promises are held only by the agent
// itself, and an agent collected mid-transfer would close its rails and strand them. BUSY is that anchor; an
// idle agent is not in it and stays collectable.
const BUSY = new Set<object>();

/** Counts what holds an agent busy; the first ref takes the addon's ref and anchors the agent, the last drops both. */
export class KeepAlive {
  // ref()/unref() on the addon's thread-safe function are a switch, not a count; count here.
  #refs = 0;

  constructor(
    private readonly native: { ref(): void; unref(): void },
    private readonly owner: object,
  ) {}

  ref(): void {
    if (this.#refs++ === 0) {
      this.native.ref();
      BUSY.add(this.owner);
    }
  }

  unref(): void {
    if (--this.#refs === 0) {
      this.native.unref();
      BUSY.delete(this.owner);
    }
  }

  /** When the agent has closed: the addon's function is released with it, so only the count and the anchor go. */
  reset(): void {
    this.#refs = 0;
    BUSY.delete(this.owner);
  }
}
