// Admission control at the frontend: at most `max` requests in flight; one more is refused at once with
// KVF_ERR_OVERLOADED (HTTP 429, Retry-After) instead of joining a queue whose tail would time out after doing
// part of its work. The limit should be what the workers can finish within the request timeout (docs: README).
import { KvfError } from '../../common/errors.js';

export class Admission {
  readonly max: number;
  #inflight = 0;

  constructor(max: number) {
    this.max = max;
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** Takes a slot, or throws KVF_ERR_OVERLOADED; the returned function gives it back (once, however often called). */
  enter(): () => void {
    if (this.#inflight >= this.max)
      throw new KvfError('KVF_ERR_OVERLOADED', `${this.#inflight} requests are in flight, the most this deployment takes (--max-inflight); retry later`);
    this.#inflight++;
    let left = false;
    return () => {
      if (left) return;
      left = true;
      this.#inflight--;
    };
  }
}
