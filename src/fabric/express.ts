// The JS half of the express lane (native/core/rail.h: PostExpress, ReapExpress): small transfers are posted on
// the JS thread and their completions are found only by polling the addon, which delivers what it finds on
// the caller's stack. This class decides when to poll: right after a post (shm often finishes a small READ
// inside the post call), then on every turn of the event loop while any express op is in flight.

// How long the loop spins (setImmediate) for completions after the last one before it polls once a millisecond
// instead (a slow or dead peer).
const SPIN_MS = 2;
// How long completions delivered on the caller's stack may keep the event loop from turning.
const HOLD_MS = 0.5;

export class ExpressPoller {
  readonly #reap: () => number;
  readonly #pending: () => number;
  readonly #closed: () => boolean;
  #scheduled = false;
  #progressAt = 0;
  #heldSince = 0;

  /** `reap` polls the addon and returns the express ops still in flight; `pending` counts unsettled transfers. */
  constructor(reap: () => number, pending: () => number, closed: () => boolean) {
    this.#reap = reap;
    this.#pending = pending;
    this.#closed = closed;
  }

  /** Called right after every post. */
  afterPost(): void {
    // Completing on the caller's stack is what makes small transfers fast, but a caller that awaits transfer
    // after transfer would then never let the event loop turn (each completion resolves in a microtask).
    // After HOLD_MS of that, completions wait for the loop's next turn.
    const now = performance.now();
    if (this.#heldSince === 0) {
      this.#heldSince = now;
      setImmediate(this.#loopTurned);
    } else if (now - this.#heldSince > HOLD_MS) {
      this.#schedule(true);
      return;
    }
    this.#poll();
  }

  #loopTurned = (): void => {
    this.#heldSince = 0;
  };

  #poll(): void {
    if (this.#closed()) return;
    const before = this.#pending();
    const left = this.#reap();
    if (left === 0) {
      this.#progressAt = 0;
      return;
    }
    const now = performance.now();
    if (this.#pending() < before || this.#progressAt === 0) this.#progressAt = now;
    this.#schedule(now - this.#progressAt < SPIN_MS);
  }

  // setImmediate keeps the loop from sleeping in its poll phase, so a completion is seen within a loop turn.
  #schedule(spin: boolean): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    if (spin) setImmediate(this.#tick);
    else setTimeout(this.#tick, 1).unref(); // the transfer in flight itself keeps the process alive
  }

  #tick = (): void => {
    this.#scheduled = false;
    this.#poll();
  };
}
