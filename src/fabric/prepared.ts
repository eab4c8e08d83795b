// A descriptor list validated once and posted many times (the pattern of NIXL's prepared lists): bounds,
// regions and overlaps are checked at prepare(); posting it — whole or a selection by index — costs a few
// hundred nanoseconds per descriptor less than validating again, which matters at thousands of KV blocks.
import { KvfError } from '../common/errors.js';
import type { RemotePeer } from './peer.js';

export interface PreparedOwner {
  releasePrepared(list: PreparedTransfer): void;
}

export class PreparedTransfer {
  #owner: PreparedOwner;
  #released = false;

  constructor(
    owner: PreparedOwner,
    /** The addon's list id. */
    readonly id: number,
    readonly peer: RemotePeer,
    /** Number of descriptors; indices select among 0..count-1. */
    readonly count: number,
    /** Bytes moved when the whole list is posted. */
    readonly bytes: number,
  ) {
    this.#owner = owner;
  }

  get released(): boolean {
    return this.#released;
  }

  /** Frees the list in the addon. Idempotent; posting it afterwards is KVF_ERR_CLOSED. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#owner.releasePrepared(this);
  }

  /** @internal */
  assertUsable(): void {
    if (this.#released) throw new KvfError('KVF_ERR_CLOSED', `prepared list ${this.id} was released`);
  }
}
