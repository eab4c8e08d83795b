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
  ) {}

  get valid(): boolean {
    return this.#valid;
  }

  /** @internal */
  markInvalid(): void {
    this.#valid = false;
  }
}
