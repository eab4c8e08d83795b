#!/usr/bin/env node
// The kvfabric command: the serving processes (serve, frontend, prefill, decode) and `info`, which opens an
// agent the way a worker would and prints what it chose — the first thing to check on a new node.
// The serving commands' flags are the configuration keys of src/serve/config-schema.ts, declared from the schema
// (configFlags: name, description, default), so a new key gets its flag without an edit here; the config also
// reads every key as KVF_* env and from --config.
import { Command, Option } from 'commander';

import { benchOptions } from '../bench/cli.js';
import { configFlags, type ConfigFlag } from '../serve/config-schema.js';
import type { LocalStackOptions } from '../serve/local-stack.js';

// Each command imports what it runs when it runs: loading the serving stack (fastify, gRPC, etcd) for
// `kvfabric info` would cost a second of start-up.

const program = new Command('kvfabric').description('KV-cache transfer over libfabric');

program
  .command('info')
  .description(
    'open an agent as a worker would and print the backend, provider, fabric, domains, rails, the address peers dial and the GPUs (CUDA driver, FI_HMEM)',
  )
  .option('-p, --provider <name>', 'tcp | shm | efa | a libfabric provider name (default: FI_PROVIDER, else efa, else tcp)')
  .option('-r, --rails <n>', 'number of rails', (v) => Number.parseInt(v, 10))
  .option('--listen <host:port>', "the worker's gRPC listen address (default: KVF_LISTEN, else 127.0.0.1:0)")
  .option('--advertise <host:port>', "the worker's advertised gRPC address (default: KVF_ADVERTISE)")
  .option('--fabric-address <ip>', 'tcp provider: the address the fabric endpoints bind (default: KVF_FABRIC_ADDRESS, else derived as a worker does)')
  .action(async (opts: { provider?: string; rails?: number; listen?: string; advertise?: string; fabricAddress?: string }) => {
    const [{ Agent }, { addon }, { gpuAddon }, { mentionsCuda }, { endpointsOf }, { workerFabricAddress, loopbackWarning }] = await Promise.all([
      import('../fabric/agent.js'),
      import('../fabric/native.js'),
      import('../fabric/gpu-native.js'),
      import('../fabric/hmem.js'),
      import('../fabric/address.js'),
      import('../serve/fabric-address.js'),
    ]);
    const env = process.env;
    const listen = opts.listen ?? env.KVF_LISTEN ?? '127.0.0.1:0';
    const advertise = opts.advertise ?? (env.KVF_ADVERTISE || undefined);
    const fabric = workerFabricAddress({ fabricAddress: opts.fabricAddress ?? (env.KVF_FABRIC_ADDRESS || undefined), listen, advertise });
    const agent = await Agent.create({
      name: `kvfabric-info-${process.pid}`,
      logger: false,
      ...(opts.provider !== undefined ? { provider: opts.provider } : {}),
      ...(opts.rails !== undefined ? { rails: opts.rails } : {}),
      ...(fabric.address !== undefined ? { address: fabric.address } : {}),
    });
    const { info } = agent;
    const fabricAddresses = endpointsOf(agent.provider, info.addresses);
    const warning = loopbackWarning(fabricAddresses, advertise ?? listen);
    // The CUDA driver as the addon loads it (libcuda.so.1 or KVF_LIBCUDA), whether this provider offers FI_HMEM, and
    // whether the loaded libfabric was built with CUDA (without it, FI_HMEM means host memory only).
    const hmem = gpuAddon.libfabricHmem(agent.provider);
    const gpu = {
      ...gpuAddon.cudaStatus(),
      fiHmem: hmem.hmem,
      ...(hmem.library ? { libfabricPath: hmem.library, libfabricCuda: mentionsCuda(hmem.library) ?? null } : {}),
      // Whether this agent opened its rails with FI_HMEM (AgentOptions.hmem 'auto'): device regions then take `hmem`.
      agentHmem: agent.info.hmem,
    };
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
          // What peers dial for KV (tcp); the gRPC address is what the frontend dials.
          fabricAddresses,
          fabricAddressFrom: fabric.source,
          grpcAddress: advertise ?? listen,
          gpu,
          warnings: warning ? [warning] : [],
        },
        null,
        2,
      ),
    );
    if (warning) console.error(`kvfabric info: warning: ${warning}`);
    await agent.close();
  });

/** The help text of a config flag: its description and, when the schema has one worth showing, its default. */
function flagHelp(f: ConfigFlag): string {
  const shown = f.default === undefined || f.default === false || (Array.isArray(f.default) && f.default.length === 0) ? undefined : f.default;
  return shown === undefined ? f.description : `${f.description} (default: ${String(shown)})`;
}

/**
 * Declares a config flag. No commander default: an absent flag must leave the file's and the environment's value
 * (the schema's default applies last, in config.ts), so the default is only shown in the help.
 */
function configOption(f: ConfigFlag): Option {
  const option = new Option(f.flags, flagHelp(f));
  return f.choices ? option.choices(f.choices) : option;
}

/** The serving processes: each takes --config and the flags of its kind's config keys. */
const serving = (cmd: Command, kind: 'worker' | 'frontend'): Command => {
  cmd.option('--config <file>', 'JSON configuration file (flags and KVF_* env override it)');
  for (const f of configFlags(kind)) cmd.addOption(configOption(f));
  return cmd;
};

for (const role of ['prefill', 'decode'] as const) {
  serving(program.command(role).description(`run a ${role} worker (gRPC control plane, KV over libfabric)`), 'worker').action(
    async (opts: Record<string, unknown>) => {
      const { config, ...flags } = opts;
      const [{ runWorker }, { workerConfig }] = await Promise.all([import('../serve/processes.js'), import('../serve/config.js')]);
      await runWorker(workerConfig({ flags: { ...flags, role }, ...(config ? { file: config as string } : {}) }));
    },
  );
}

serving(program.command('frontend').description('run the OpenAI-compatible HTTP frontend and router'), 'frontend').action(
  async (opts: Record<string, unknown>) => {
    const { config, ...flags } = opts;
    const [{ runFrontend }, { frontendConfig }] = await Promise.all([import('../serve/processes.js'), import('../serve/config.js')]);
    await runFrontend(frontendConfig({ flags, ...(config ? { file: config as string } : {}) }));
  },
);

/**
 * `serve` passes a few keys on to its workers and frontend: their flags, from the schema, with serve's own
 * wording where it differs. It applies the mode's and the listen address's schema defaults itself, and tcp as
 * the provider between the workers; the rest stays to the processes' own configuration.
 */
const SERVE_KEYS = {
  model: 'worker',
  provider: 'worker',
  mode: 'frontend',
  listen: 'frontend',
  blocks: 'worker',
  tokensPerBlock: 'worker',
  kvDtype: 'worker',
  threads: 'worker',
  maxBatchSequences: 'worker',
  maxStepTokens: 'worker',
  prefixCache: 'worker',
  router: 'frontend',
} as const;
type ServeKey = keyof typeof SERVE_KEYS;
const SERVE_DEFAULTED = new Set<ServeKey>(['provider', 'mode', 'listen']);
const SERVE_HELP: Partial<Record<ServeKey, { description: string; default?: string }>> = {
  provider: { description: 'libfabric provider between the workers: tcp | shm', default: 'tcp' },
  blocks: { description: 'KV blocks per worker' },
  threads: { description: 'engine threads per worker' },
};

function serveOption(key: ServeKey): Option {
  const f = configFlags(SERVE_KEYS[key]).find((c) => c.key === key)!;
  const help = SERVE_HELP[key];
  const option = new Option(f.flags, help?.description ?? f.description);
  if (f.choices) option.choices(f.choices);
  if (SERVE_DEFAULTED.has(key)) option.default(help?.default ?? f.default);
  return option;
}

const serve = program
  .command('serve')
  .description('run the whole disaggregated stack locally: prefill and decode workers as child processes, the frontend here');
for (const key of Object.keys(SERVE_KEYS) as ServeKey[]) serve.addOption(serveOption(key));
serve.action(async (opts: LocalStackOptions) => (await import('../serve/local-stack.js')).runLocalStack(opts));

program
  .command('doctor')
  .description('check this node for kvfabric over EFA: devices, providers, FI_* variables, memlock, hugepages, NIXL, GPUs')
  .option('--json', 'print the report as JSON')
  .option('-p, --provider <name>', 'the provider a worker would use (default: FI_PROVIDER / KVF_PROVIDER, else automatic)')
  .option('--root <dir>', 'read /dev, /proc and /sys under this directory (a mounted container root)', '/')
  .option('--no-agent', 'do not open a libfabric agent')
  .action(async (opts: { json?: boolean; provider?: string; root: string; agent: boolean }) => {
    const { runDoctor, renderTable } = await import('../doctor/index.js');
    const report = await runDoctor({ root: opts.root, openAgent: opts.agent, ...(opts.provider ? { provider: opts.provider } : {}) });
    console.log(opts.json ? JSON.stringify(report, null, 2) : renderTable(report, process.stdout.columns || 120));
    if (!report.ok) process.exitCode = 1;
  });

benchOptions(
  program.command('bench').description('measure READ/WRITE bandwidth, ops/s, latency and event-loop delay between two agents (nixlbench-style)'),
).action(async (opts: Record<string, unknown>) => {
  const { runBenchCommand } = await import('../bench/run.js');
  await runBenchCommand(opts);
});

program.parseAsync().catch((err: Error & { code?: string }) => {
  console.error(`kvfabric: ${err.code ? `${err.code}: ` : ''}${err.message}`);
  process.exitCode = 1;
});
