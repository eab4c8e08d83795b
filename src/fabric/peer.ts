// A peer whose metadata this agent loaded: the regions it lets us read and write.
export interface RemoteRegionInfo {
  id: number;
  length: number;
  /** Device regions only: 'cuda', or 'stand-in' (host memory the peer treats as a device's). */
  kind?: 'cuda' | 'stand-in';
}

/** @internal what RemotePeer needs of its agent for grants. */
export interface GrantReader {
  addPeerGrant(peer: RemotePeer, bytes: Uint8Array): number;
  removePeerGrant(peer: RemotePeer, id: number): void;
}

export class RemotePeer {
  #valid = true;

  constructor(
    /** The agent that loaded this peer; a peer handle is only good with its own agent. */
    readonly agent: GrantReader,
    /** @internal native peer id */
    readonly id: number,
    readonly name: string,
    readonly provider: string,
    readonly rails: number,
    readonly regions: readonly RemoteRegionInfo[],
    /** What carries transfers to this peer: 'cma' (same host, cross-memory attach) or 'fabric' (the provider). */
    readonly path: 'fabric' | 'cma' = 'fabric',
    /** Why a peer on this host is reached over the fabric anyway (the kernel refused cross-memory attach). */
    readonly fastPathRefused?: string,
    /** Same host: how many of the peer's regions are mapped here (its shared memory), copied by memcpy. */
    readonly mappedRegions = 0,
    /** @internal the peer's region-table nonce from its metadata (zeros: none): grants must carry it. */
    readonly digest: Uint8Array = new Uint8Array(16),
  ) {}

  /**
   * Adds grant bytes the peer handed out (remote `agent.grant()`), parsed strictly: they must be this peer's
   * (its name and region-table nonce). Returns the region id to use as `remote` in descriptors; `remoteOffset`
   * counts from the grant's first byte. KVF_ERR_BAD_METADATA for malformed or foreign bytes; on this host
   * KVF_ERR_REMOTE_ACCESS when the owner's table says the grant is not live (revoked). Grants belong to this
   * RemotePeer: loading the owner's metadata again makes a new one, without them.
   */
  addGrant(bytes: Uint8Array): number {
    return this.agent.addPeerGrant(this, bytes);
  }

  /** Forgets a grant added here (prepared lists naming it must be prepared again). */
  removeGrant(id: number): void {
    this.agent.removePeerGrant(this, id);
  }

  get valid(): boolean {
    return this.#valid;
  }

  /** @internal */
  markInvalid(): void {
    this.#valid = false;
  }
}
