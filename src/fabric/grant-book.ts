// The agent's side of grants: making them (arguments checked, bytes serialised), the live ones (ended with
// their region and with the agent), and adding a peer's grant bytes after checking they are that peer's.
// Agent delegates here so that it stays a thin shape over the addon.
import { KvfError } from '../common/errors.js';
import { Grant, decodeGrant, encodeGrant, type GrantAccess } from './grants.js';
import type { NativeAgent } from './native.js';
import type { RemotePeer } from './peer.js';

export interface GrantOptions {
  offset: number;
  length: number;
  access: GrantAccess;
}

export const GRANT_OPTION_KEYS = ['offset', 'length', 'access'] as const satisfies readonly (keyof GrantOptions)[];

export class GrantBook {
  #live = new Map<number, Grant>();

  constructor(
    private readonly native: NativeAgent,
    /** The owner's name and region-table nonce (zeros: none), carried in every grant. */
    private readonly owner: string,
    private readonly digest: Uint8Array,
    /** False once the agent has closed (its grants ended with it). */
    private readonly open: () => boolean,
  ) {}

  get size(): number {
    return this.#live.size;
  }

  /** `regionId` is a region of this agent (the caller checked). Throws the addon's errors as they come. */
  create(regionId: number, options: GrantOptions): Grant {
    const { offset, length, access } = options ?? ({} as GrantOptions);
    if (access !== 'read' && access !== 'write') throw new KvfError('KVF_ERR_INVALID_ARGUMENT', "options.access must be 'read' or 'write'");
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new KvfError('KVF_ERR_INVALID_ARGUMENT', 'options.offset and options.length must be integers ≥ 0');
    }
    const g = this.native.grant(regionId, offset, length, access === 'write');
    const bytes = encodeGrant({
      id: g.id,
      access,
      base: g.base,
      length,
      owner: this.owner,
      digest: this.digest,
      keys: g.keys,
      ...(g.share ? { share: g.share } : {}),
    });
    const grant = new Grant(g.id, regionId, offset, length, access, bytes, (x) => {
      this.#live.delete(x.id);
      if (this.open()) this.native.revoke(x.id);
    });
    this.#live.set(g.id, grant);
    return grant;
  }

  /** The region was deregistered: the addon ended its grants with it. */
  endRegion(regionId: number): void {
    for (const g of this.#live.values()) {
      if (g.regionId !== regionId) continue;
      g.markEnded();
      this.#live.delete(g.id);
    }
  }

  endAll(): void {
    for (const g of this.#live.values()) g.markEnded();
    this.#live.clear();
  }

  /** Parses `bytes` (strictly), checks they are `peer`'s, adds them to the addon's peer; returns the region id. */
  addToPeer(peer: RemotePeer, bytes: Uint8Array): number {
    const g = decodeGrant(bytes);
    if (g.owner !== peer.name || !Buffer.from(g.digest).equals(peer.digest)) {
      throw new KvfError('KVF_ERR_BAD_METADATA', `bad grant: it belongs to agent '${g.owner}' (or another instance of it), not to peer '${peer.name}'`, {
        peer: peer.name,
      });
    }
    const access = g.access === 'read' ? 1 : 2;
    this.native.addGrant(peer.id, { id: g.id, base: g.base, length: g.length, access, keys: g.keys, ...(g.share ? { share: g.share } : {}) });
    return g.id;
  }
}
