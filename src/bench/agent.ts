// Opens the bench's agents (initiator and target alike) from the bench options.
import { Agent, type AgentOptions } from '../fabric/agent.js';

export interface BenchAgentOptions {
  provider: string | undefined;
  rails: number | undefined;
  stripeThreshold?: number | undefined;
  fastPath: boolean | undefined;
  busyPollUs: number;
  expressMaxBytes?: number | undefined;
  fabricAddress: string | undefined;
}

export function openAgent(role: 'initiator' | 'target', o: BenchAgentOptions): Promise<Agent> {
  // fastPath is passed only when asked for, so that the Agent's own default (and KVF_FAST_PATH) apply otherwise.
  const options: AgentOptions = {
    name: `kvfabric-bench-${role}-${process.pid}`,
    logger: false,
    ...(o.provider !== undefined ? { provider: o.provider } : {}),
    ...(o.rails !== undefined ? { rails: o.rails } : {}),
    ...(o.stripeThreshold !== undefined ? { stripeThreshold: o.stripeThreshold } : {}),
    ...(o.fabricAddress !== undefined ? { address: o.fabricAddress } : {}),
    ...(o.fastPath !== undefined ? { fastPath: o.fastPath } : {}),
    ...(o.expressMaxBytes !== undefined ? { expressMaxBytes: o.expressMaxBytes } : {}),
    busyPollUs: o.busyPollUs,
  };
  return Agent.create(options);
}
