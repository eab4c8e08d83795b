// A peer whose metadata this agent loaded: the regions it lets us read and write.
export interface RemoteRegionInfo {
  id: number;
  length: number;
}

export class RemotePeer {
  #valid = true;

  constructor(
    /** The agent that loaded this peer; a peer handle is only good with its own agent. */
    readonly agent: object,
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
  ) {}

  get valid(): boolean {
    return this.#valid;
  }

  /** @internal */
  markInvalid(): void {
    this.#valid = false;
  }
}
