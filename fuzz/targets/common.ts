// What every fuzz target promises: bytes from outside are either accepted or refused with a KvfError whose
// code is registered (docs/errors.md). Anything else (a TypeError, a RangeError, a plain Error, a hang) is a
// finding. Targets export `check` (the body, which may throw KvfError) and `fuzz` (what jazzer.js calls:
// refusals swallowed, findings rethrown); test/fuzz-corpus.test.ts replays the corpus through `check`.
import { KvfError } from '../../src/common/errors.js';
import { isErrorCode } from '../../src/common/error-registry.js';

export type Check = (data: Buffer) => void | Promise<void>;

/** True for an expected refusal. A KvfError wrapping another exception (a decoder's safety net) is not one. */
export function isRefusal(err: unknown): boolean {
  if (!(err instanceof KvfError) || !isErrorCode(err.code)) return false;
  const cause = (err as { cause?: unknown }).cause;
  return !(cause instanceof Error) || cause instanceof KvfError;
}

/** `check` as a jazzer.js fuzz function: refusals are fine, anything else propagates as a finding. */
export function guarded(check: Check): (data: Buffer) => void | Promise<void> {
  const judge = (err: unknown): void => {
    if (!isRefusal(err)) throw err;
  };
  return (data) => {
    let out: void | Promise<void>;
    try {
      out = check(data);
    } catch (err) {
      return judge(err);
    }
    return out instanceof Promise ? out.catch(judge) : out;
  };
}

/** A finding that is not an exception of the code under test: the target's own invariant failed. */
export function invariant(ok: boolean, message: string): asserts ok {
  if (!ok) throw new Error(`invariant: ${message}`);
}
