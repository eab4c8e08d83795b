#!/usr/bin/env node
// The kvfabric command: the serving processes (serve, frontend, prefill, decode) and `info`, which opens an
// agent the way a worker would and prints what it chose — the first thing to check on a new node.
// Flags map one to one onto the configuration keys of src/serve/config.ts (which also reads KVF_* env).
import { Command, Option } from 'commander';

import { benchOptions } from '../bench/cli.js';
import type { LocalStackOptions } from '../serve/local-stack.js';

// Each command imports what it runs when it runs: loading the serving stack (fastify, gRPC, etcd) for
// `kvfabric info` would cost a second of start-up.

const program = new Command('kvfabric').description('KV-cache transfer over libfabric');

program
  .command('info')
  .description('open an agent as a worker would and print the backend, provider, fabric, domains, rails and the address peers dial')
  .option('-p, --provider <name>', 'tcp | shm | efa | a libfabric provider name (default: FI_PROVIDER, else efa, else tcp)')
  .option('-r, --rails <n>', 'number of rails', (v) => Number.parseInt(v, 10))
  .option('--listen <host:port>', "the worker's gRPC listen address (default: KVF_LISTEN, else 127.0.0.1:0)")
  .option('--advertise <host:port>', "the worker's advertised gRPC address (default: KVF_ADVERTISE)")
  .option('--fabric-address <ip>', 'tcp provider: the address the fabric endpoints bind (default: KVF_FABRIC_ADDRESS, else derived as a worker does)')
  .action(async (opts: { provider?: string; rails?: number; listen?: string; advertise?: string; fabricAddress?: string }) => {
    const [{ Agent }, { addon }, { endpointsOf }, { workerFabricAddress, loopbackWarning }] = await Promise.all([
      import('../fabric/agent.js'),
      import('../fabric/native.js'),
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
          warnings: warning ? [warning] : [],
        },
        null,
        2,
      ),
    );
    if (warning) console.error(`kvfabric info: warning: ${warning}`);
    await agent.close();
  });

const commonOptions = (cmd: Command): Command =>
  cmd
    .option('--config <file>', 'JSON configuration file (flags and KVF_* env override it)')
    .option('-m, --model <path>', 'GGUF model (default: SmolLM2 when fetched, else the tiny test model)')
    .option('--model-name <id>', 'model id served in the API (default: the file name)')
    .option('--listen <host:port>', 'listen address')
    .option('--etcd <urls>', 'etcd endpoints, comma-separated (discovery)')
    .option('--etcd-prefix <prefix>', 'etcd key prefix of worker entries')
    .option('--cluster-token-file <file>', 'file holding the cluster token every gRPC call proves (or KVF_CLUSTER_TOKEN)')
    .option('--tls-cert <file>', 'TLS certificate chain (PEM) of this process: turns TLS on for the control plane')
    .option('--tls-key <file>', 'TLS private key (PEM)')
    .option('--tls-ca <file>', "CA (PEM) that signs the peers' certificates")
    .option('--tls-client-auth', 'mutual TLS: servers require client certificates signed by --tls-ca, clients present theirs')
    .option('--tls-server-name <name>', "the name clients expect in workers' certificates (default: the host dialled)");

for (const role of ['prefill', 'decode'] as const) {
  commonOptions(program.command(role).description(`run a ${role} worker (gRPC control plane, KV over libfabric)`))
    .option('--id <id>', 'worker id (default: <role>-<host>-<pid>)')
    .option('--advertise <host:port>', 'address others use to reach this worker (default: the listen address)')
    .option('-p, --provider <name>', 'tcp | shm | efa (default: FI_PROVIDER, else efa, else tcp)')
    .option('-r, --rails <n>', 'fabric rails')
    .option('--busy-poll-us <us>', 'rail threads keep polling this long after activity (lower small-transfer latency, costs a core; default 0)')
    .option('--fabric-address <ip>', 'tcp provider: address the fabric endpoints bind')
    .option('--blocks <n>', 'KV blocks in the pool')
    .option('--tokens-per-block <n>', 'positions per KV block')
    .addOption(new Option('--kv-dtype <type>', 'KV cache element type').choices(['f16', 'f32']))
    .option('--threads <n>', 'engine threads')
    .option('--hugepages', 'put the KV pool on 2 MiB hugepages')
    .option('--lease-ms <ms>', 'free blocks not pulled within this')
    .option('--max-lease-ms <ms>', 'the longest lease granted, whatever a caller asks for')
    .option('--peer-idle-ms <ms>', 'drop a fabric peer unused this long (default 300000)')
    .option('--max-streams <n>', 'decode streams at most; more get KVF_ERR_OVERLOADED (default 64)')
    .option('--max-queue-ms <ms>', 'refuse a prompt that would wait longer than this for the engine at its measured rate (default 30000)')
    .option('--handle-key-file <file>', 'file holding the key that signs KV handles, the same on every worker (or KVF_HANDLE_KEY)')
    .option('--transfer-timeout-ms <ms>', 'fail a KV transfer after this')
    .option('--register <host:port>', 'register with this frontend registry')
    .option('--etcd-ttl <s>', 'etcd lease TTL, seconds')
    .action(async (opts: Record<string, unknown>) => {
      const { config, ...flags } = opts;
      const [{ runWorker }, { workerConfig }] = await Promise.all([import('../serve/processes.js'), import('../serve/config.js')]);
      await runWorker(workerConfig({ flags: { ...flags, role }, ...(config ? { file: config as string } : {}) }));
    });
}

commonOptions(program.command('frontend').description('run the OpenAI-compatible HTTP frontend and router'))
  .option('--prefill <addrs>', 'static prefill worker addresses, comma-separated')
  .option('--decode <addrs>', 'static decode worker addresses, comma-separated')
  .option('--registry-listen <host:port>', 'serve the worker registry (workers use --register)')
  .addOption(new Option('--mode <mode>', 'KV hand-off').choices(['pull', 'push', 'aggregated']))
  .option('--request-timeout-ms <ms>', 'fail a request after this')
  .option('--prefill-timeout-ms <ms>', 'fall back to local prefill after this')
  .option('--lease-ms <ms>', 'how long prefilled blocks wait for their decode worker')
  .option('--health-interval-ms <ms>', 'worker health check period')
  .option('--body-timeout-ms <ms>', "a request's headers and body must arrive within this (else 408)")
  .option('--max-connections <n>', 'open HTTP connections at most')
  .option('--max-inflight <n>', 'requests in flight at most; more get 429 at once')
  .option('--max-migrations <n>', 'decode workers a request may move to when the one streaming it fails (default 2)')
  .option('--keepalive-ms <ms>', 'a worker that leaves a ping of an open call unanswered this long is taken for dead (default 10000)')
  .action(async (opts: Record<string, unknown>) => {
    const { config, ...flags } = opts;
    const [{ runFrontend }, { frontendConfig }] = await Promise.all([import('../serve/processes.js'), import('../serve/config.js')]);
    await runFrontend(frontendConfig({ flags, ...(config ? { file: config as string } : {}) }));
  });

program
  .command('serve')
  .description('run the whole disaggregated stack locally: prefill and decode workers as child processes, the frontend here')
  .option('-m, --model <path>', 'GGUF model (default: SmolLM2 when fetched, else the tiny test model)')
  .option('-p, --provider <name>', 'libfabric provider between the workers: tcp | shm', 'tcp')
  .addOption(new Option('--mode <mode>', 'KV hand-off').choices(['pull', 'push', 'aggregated']).default('pull'))
  .option('--listen <host:port>', 'HTTP listen address', '127.0.0.1:8000')
  .option('--blocks <n>', 'KV blocks per worker')
  .option('--tokens-per-block <n>', 'positions per KV block')
  .addOption(new Option('--kv-dtype <type>', 'KV cache element type').choices(['f16', 'f32']))
  .option('--threads <n>', 'engine threads per worker')
  .action(async (opts: LocalStackOptions) => (await import('../serve/local-stack.js')).runLocalStack(opts));

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
