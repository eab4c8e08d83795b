// Notifications arrive from the addon in batches; consumers read them as an async iterator (or as
// 'notification' events on the Agent). Every iterator sees every notification that arrives after it began.

export interface Notification {
  /** Name of the sending agent. */
  from: string;
  data: Buffer;
}

interface Reader {
  buffered: Notification[];
  waiting?: (result: IteratorResult<Notification>) => void;
}

export class NotificationQueue {
  #readers = new Set<Reader>();
  #ended = false;
  #waiters = 0;

  // ref/unref keep the process alive while someone awaits a notification, as a socket read would.
  constructor(
    private readonly ref: () => void,
    private readonly unref: () => void,
  ) {}

  push(n: Notification): void {
    for (const r of this.#readers) {
      if (r.waiting) this.#settle(r, { value: n, done: false });
      else r.buffered.push(n);
    }
  }

  end(): void {
    this.#ended = true;
    for (const r of this.#readers) {
      if (r.waiting) this.#settle(r, { value: undefined, done: true });
    }
    this.#readers.clear();
  }

  iterate(): AsyncIterableIterator<Notification> {
    const reader: Reader = { buffered: [] };
    if (!this.#ended) this.#readers.add(reader);
    const done = (): IteratorResult<Notification> => ({ value: undefined, done: true });
    const it: AsyncIterableIterator<Notification> = {
      next: () => {
        const n = reader.buffered.shift();
        if (n) return Promise.resolve({ value: n, done: false });
        if (this.#ended || !this.#readers.has(reader)) return Promise.resolve(done());
        return new Promise((resolve) => {
          reader.waiting = resolve;
          if (this.#waiters++ === 0) this.ref();
        });
      },
      return: () => {
        this.#readers.delete(reader);
        if (reader.waiting) this.#settle(reader, done());
        return Promise.resolve(done());
      },
      [Symbol.asyncIterator]() {
        return it;
      },
    };
    return it;
  }

  #settle(r: Reader, result: IteratorResult<Notification>): void {
    const w = r.waiting!;
    r.waiting = undefined;
    if (--this.#waiters === 0) this.unref();
    w(result);
  }
}
