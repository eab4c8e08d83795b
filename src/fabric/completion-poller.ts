// When the event loop polls the addon for completions. The express lane (native/core/rail.h: PostExpress,
// ReapExpress) posts small transfers on the JS thread, and their completions are found only by polling the
// addon, which delivers what it finds on the caller's stack. What completes inside the post call itself (a
// same-host copy) comes back with the call (the records buffer). This class decides when to poll for the rest:
// on every turn of the event loop while any transfer is in flight, each poll spinning in the addon for up to
// REAP_SPIN_US. The same polls catch a lone small transfer that a rail thread carries (every transfer on shm,
// which has no express lane): spinning for it beats the rail thread's wake-up of the loop (docs/design.md, "The
// express lane").

// How long the loop keeps polling on every turn after the last completion before it polls once a millisecond
// instead (a slow or dead peer).
const SPIN_MS = 2;
// How long one poll may wait in the addon for a completion. Waiting there sees a completion within one CQ read
// of its arrival, where a loop turn costs an epoll_wait and more; other work on the loop waits at most this long.
const REAP_SPIN_US = 50;
// How long completions settled on the caller's stack may keep the event loop from turning.
const HOLD_MS = 0.5;

export class CompletionPoller {
  readonly #reap: (spinUs: number) => number;
  readonly #pending: () => number;
  readonly #closed: () => boolean;
  #scheduled = false;
  #progressAt = 0;
  #heldSince = 0;

  /** `reap` polls the addon and returns the express ops still in flight; `pending` counts unsettled transfers. */
  constructor(reap: (spinUs: number) => number, pending: () => number, closed: () => boolean) {
    this.#reap = reap;
    this.#pending = pending;
    this.#closed = closed;
  }

  /**
   * Whether a transfer that completed inside its post call may settle right away. Settling on the caller's
   * stack is what makes small transfers fast, but a caller that awaits transfer after transfer would then
   * never let the event loop turn (each settles in a microtask); after HOLD_MS of that, they wait for the
   * loop's next turn.
   */
  maySettleNow(): boolean {
    const now = performance.now();
    if (this.#heldSince === 0) {
      this.#heldSince = now;
      setImmediate(this.#loopTurned);
      return true;
    }
    return now - this.#heldSince <= HOLD_MS;
  }

  /** Called after a post whose transfer is still in flight. */
  afterPost(): void {
    this.#schedule(true);
  }

  #loopTurned = (): void => {
    this.#heldSince = 0;
  };

  #poll(): void {
    if (this.#closed()) return;
    const before = this.#pending();
    const left = this.#reap(REAP_SPIN_US);
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
