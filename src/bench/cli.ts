// The options of `kvfabric bench`, kept apart from the code that runs it so that src/cli/main.ts can list
// them without loading the bench (which it imports only when the command runs).
import type { Command } from 'commander';

export function benchOptions(cmd: Command): Command {
  return cmd
    .option('-p, --provider <name>', 'tcp | shm | efa | a libfabric provider name (default: FI_PROVIDER, else efa, else tcp)')
    .option('--op <ops>', 'READ, WRITE or both, comma-separated (default: WRITE,READ; READ with --latency)')
    .option('--block-sizes <list>', 'block sizes, comma-separated, K/M/G suffixes (default: 4K,16K,64K,256K,1M,4M,16M,64M; 4K with --latency)')
    .option('--batch <n>', 'descriptors (blocks) per transfer (default: as many as keep --depth transfers on disjoint blocks of the pool, 1..32)')
    .option('--depth <n>', 'transfers in flight (default: 4)')
    .option('-r, --rails <n>', "rails (endpoints) of each agent (default: the agent's: one per EFA NIC, 1 on tcp and shm)")
    .option('--stripe-threshold <bytes>', "split runs of at least this many bytes across the rails; 0 never (default: the agent's, 128K)")
    .option('--pool <size>', 'registered pool on each side; transfers cycle through it (default: 256M, larger than the CPU caches)')
    .option('--duration <s>', 'seconds per point (default: 2)')
    .option('--iters <n>', 'transfers per point instead of a duration')
    .option('--fast-path <on|off>', "the same-host single-copy path (default: the agent's: on unless KVF_FAST_PATH=0)")
    .option(
      '--shared-pool <on|off|auto>',
      "both pools as shared memory, which a same-host peer maps and copies with memcpy (default: auto, the agent's: shared where that memory is hugepages too)",
    )
    .option('--hugepages', 'both pools on reserved 2 MiB hugepages (vm.nr_hugepages) where there are enough, else as without')
    .option(
      '--busy-poll <us>',
      'rail threads of both agents keep polling this long after activity instead of sleeping (default: 0; 1000 with --latency, as the raw baseline spins)',
    )
    .option('--express <bytes>', "initiator: transfers up to this size are posted and reaped on the event loop; 0 off (default: the agent's, 64K)")
    .option('--prepared', 'post prepared descriptor lists by index (the default)')
    .option('--no-prepared', 'validate and post the descriptors anew on every transfer')
    .option(
      '--device <d>',
      "where the pools live: host, cuda:N, or stand-in (host memory moved as device memory: the staged path without a GPU); 'initiator,target' for one side each (default: host)",
    )
    .option('--latency', 'latency mode: one descriptor per transfer, one transfer in flight (READ 4K unless --op/--block-sizes)')
    .option('--json <file>', 'write machine, options and every point as JSON')
    .option('--chart <file>', 'draw GB/s against block size to .svg or .png (needs the optional vega, vega-lite, @resvg/resvg-js)')
    .option('--no-progress', 'no progress bar (there is none either when stderr is not a terminal)')
    .option('--fabric-address <ip>', 'tcp provider: the address the fabric endpoints bind (two hosts need a routable one; also KVF_ADDRESS)')
    .option('--connect <host:port>', 'use a standalone target started elsewhere with --target --listen')
    .option('--target', 'be the target: register the pool and serve one-sided transfers (forked by the initiator unless --listen)')
    .option('--listen <host:port>', 'with --target: hand the metadata to an initiator connecting here (port 0: any; the port is printed)');
}
