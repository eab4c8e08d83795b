#!/usr/bin/env node
// The kvfabric command. Serving, benchmarking and doctor commands arrive with their issues; `info` opens an
// agent the way a worker would and prints what it chose, which is the first thing to check on a new node.
import { Command } from 'commander';

import { Agent } from '../fabric/agent.js';
import { addon } from '../fabric/native.js';

const program = new Command('kvfabric').description('KV-cache transfer over libfabric');

program
  .command('info')
  .description('open an agent and print the backend, provider, fabric, domains and rails it chose')
  .option('-p, --provider <name>', 'tcp | shm | efa | a libfabric provider name (default: FI_PROVIDER, else efa, else tcp)')
  .option('-r, --rails <n>', 'number of rails', (v) => Number.parseInt(v, 10))
  .action(async (opts: { provider?: string; rails?: number }) => {
    const agent = await Agent.create({ name: `kvfabric-info-${process.pid}`, logger: false, ...opts });
    const { info } = agent;
    console.log(
      JSON.stringify(
        {
          libfabric: addon.libfabricVersion(),
          backend: agent.backend,
          provider: agent.provider,
          fabric: agent.fabric,
          domains: agent.domains,
          rails: agent.rails,
          virtAddr: info.virtAddr,
          mrMode: info.mrMode,
          txDepth: info.txDepth,
        },
        null,
        2,
      ),
    );
    await agent.close();
  });

program.parseAsync().catch((err: Error & { code?: string }) => {
  console.error(`kvfabric: ${err.code ? `${err.code}: ` : ''}${err.message}`);
  process.exitCode = 1;
});
