// The fabric peers a worker has loaded from KV handles, by agent name. A blob is parsed once per agent
// incarnation, and a peer unused for `idleMs` is dropped: otherwise the table only grows, by every prefill or
// decode agent that ever handed this worker a handle (restarts and scale-downs included).
import type { Agent } from '../fabric/agent.js';
import { KvfError } from '../common/errors.js';
import type { RemotePeer } from '../fabric/peer.js';

interface Entry {
  blob: Buffer;
  usedAt: number;
}

export class PeerCache {
  readonly #agent: Agent;
  readonly #idleMs: number;
  readonly #entries = new Map<string, Entry>();
  readonly #timer: NodeJS.Timeout;

  constructor(agent: Agent, idleMs: number) {
    this.#agent = agent;
    this.#idleMs = idleMs;
    this.#timer = setInterval(() => this.#sweep(), Math.max(100, Math.floor(idleMs / 2))).unref();
  }

  get size(): number {
    return this.#entries.size;
  }

  /** The peer `name` as `blob` describes it (loaded again if the blob changed), marked used now. */
  use(name: string, blob: Buffer | Uint8Array): RemotePeer {
    const entry = this.#entries.get(name);
    const known = this.#agent.peer(name);
    if (known && entry?.blob.equals(blob)) {
      entry.usedAt = Date.now();
      return known;
    }
    const peer = this.#agent.loadRemoteMetadata(blob);
    this.#entries.set(peer.name, { blob: Buffer.from(blob), usedAt: Date.now() });
    return peer;
  }

  close(): void {
    clearInterval(this.#timer);
  }

  #sweep(): void {
    const cutoff = Date.now() - this.#idleMs;
    for (const [name, entry] of this.#entries) {
      if (entry.usedAt > cutoff) continue;
      try {
        if (this.#agent.peer(name)) this.#agent.invalidateRemoteMetadata(name);
        this.#entries.delete(name);
      } catch (err) {
        // A transfer still uses it (KVF_ERR_BUSY): try again next sweep. A closed agent sweeps nothing more.
        if (!(err instanceof KvfError) || err.code !== 'KVF_ERR_BUSY') this.close();
      }
    }
  }
}
