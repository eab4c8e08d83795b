// Two processes, one KV pool each, blocks pulled over libfabric: the disaggregated hand-off in miniature.
// The "prefill" child fills its pool with KV blocks (TensorRT-LLM layout: [block][layer][K,V][heads×tokens×dim])
// and advertises it; the "decode" parent allocates its own pool, pulls the prompt's blocks with RDMA READ into
// different block ids, checks every byte, and tells prefill it may free them. Then the same with WRITE (push).
//
//   npm run example                      # tcp, then shm
//   npm run example -- --provider shm    # one provider
//   npm run example -- --device cuda:0   # both pools in GPU memory (stand-in: host memory moved as if it were)
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

import { Agent, DeviceRegion, type MemoryRegion, type TransferDescriptor, type TransferReport } from '../src/index.js';

const LAYERS = 30;
const KV_HEADS = 3;
const HEAD_DIM = 64;
const TOKENS_PER_BLOCK = 32;
const BYTES_PER_ELEMENT = 2; // f16
const BLOCK_BYTES = LAYERS * 2 * KV_HEADS * TOKENS_PER_BLOCK * HEAD_DIM * BYTES_PER_ELEMENT; // 737,280 bytes
const POOL_BLOCKS = 96;
const PROMPT_BLOCKS = 64; // a 2048-token prompt

function blockPattern(block: number, bytes: Uint8Array): void {
  // Deterministic, block-specific contents, so a block landing in the wrong place is caught.
  let x = (block + 1) * 2654435761;
  for (let i = 0; i < bytes.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 255;
    bytes[i + 1] = (x >>> 8) & 255;
    bytes[i + 2] = (x >>> 16) & 255;
    bytes[i + 3] = (x >>> 24) & 255;
  }
}

type Pool = MemoryRegion | DeviceRegion;

/** A pool of KV blocks in host memory, or in device memory ('cuda:N', or 'stand-in'). */
function allocatePool(agent: Agent, device: string): Pool {
  return device === 'host' ? agent.allocate(POOL_BLOCKS * BLOCK_BYTES) : agent.allocate(POOL_BLOCKS * BLOCK_BYTES, { device });
}

function writeBlock(pool: Pool, block: number, bytes: Uint8Array): void {
  if (pool instanceof DeviceRegion) pool.copyFrom(bytes, block * BLOCK_BYTES);
  else pool.bytes.set(bytes, block * BLOCK_BYTES);
}

function readBlock(pool: Pool, block: number): Uint8Array {
  if (!(pool instanceof DeviceRegion)) return pool.bytes.subarray(block * BLOCK_BYTES, (block + 1) * BLOCK_BYTES);
  const out = new Uint8Array(BLOCK_BYTES);
  pool.copyTo(out, block * BLOCK_BYTES);
  return out;
}

async function prefill(provider: string, device: string): Promise<void> {
  const agent = await Agent.create({ name: `prefill-${process.pid}`, provider, fastPath: false });
  const pool = allocatePool(agent, device);
  // The prompt's KV sits in blocks 10, 11, ... of prefill's pool.
  const blocks = Array.from({ length: PROMPT_BLOCKS }, (_, i) => 10 + i);
  const scratch = new Uint8Array(BLOCK_BYTES);
  blocks.forEach((b, i) => {
    blockPattern(i, scratch);
    writeBlock(pool, b, scratch);
  });
  process.send!({ metadata: agent.getLocalMetadata().toString('base64'), region: pool.id, blocks });
  for await (const n of agent.notifications()) {
    const msg = JSON.parse(n.data.toString()) as { hello?: string; freed?: number[]; pushTo?: { metadata: string; region: number; blocks: number[] } };
    // Device memory is staged by its owner, who answers the reader: prefill must know decode to serve a pull.
    if (msg.hello) {
      agent.loadRemoteMetadata(Buffer.from(msg.hello, 'base64'));
      await agent.sendNotification(n.from, JSON.stringify({ welcome: true }));
    }
    if (msg.freed) console.log(`[prefill] ${n.from} pulled ${msg.freed.length} blocks: freeing them`);
    if (msg.pushTo) {
      const peer = agent.loadRemoteMetadata(Buffer.from(msg.pushTo.metadata, 'base64'));
      const descs = blocks.map((b, i) => ({
        local: pool,
        localOffset: b * BLOCK_BYTES,
        remote: msg.pushTo!.region,
        remoteOffset: msg.pushTo!.blocks[i]! * BLOCK_BYTES,
        length: BLOCK_BYTES,
      }));
      const report = await agent.write(peer, descs, { notification: JSON.stringify({ pushed: blocks.length }) });
      console.log(`[prefill] pushed ${report.bytes} bytes in ${report.durationMs.toFixed(2)} ms`);
      break;
    }
  }
  await agent.close();
  process.disconnect();
}

function verify(pool: Pool, blocks: number[]): boolean {
  const expected = new Uint8Array(BLOCK_BYTES);
  return blocks.every((b, i) => {
    blockPattern(i, expected);
    const got = readBlock(pool, b);
    return createHash('sha256').update(got).digest('hex') === createHash('sha256').update(expected).digest('hex');
  });
}

async function decode(provider: string, device: string): Promise<TransferReport[]> {
  const child = fork(fileURLToPath(import.meta.url), ['--role', 'prefill', '--provider', provider, '--device', device], { execArgv: ['--import', 'tsx'] });
  const hello = await new Promise<{ metadata: string; region: number; blocks: number[] }>((resolve, reject) => {
    child.once('message', resolve as never);
    child.once('exit', (code) => reject(new Error(`prefill exited with ${code}`)));
  });
  // fastPath: false: this example shows the provider at work (same host would otherwise go by cross-memory attach)
  const agent = await Agent.create({ name: `decode-${process.pid}`, provider, fastPath: false });
  const pool = allocatePool(agent, device);
  const peer = agent.loadRemoteMetadata(Buffer.from(hello.metadata, 'base64'));
  const inbox = agent.notifications();
  if (device !== 'host') {
    await agent.sendNotification(peer, JSON.stringify({ hello: agent.getLocalMetadata().toString('base64') }));
    await inbox.next(); // prefill knows us now
  }

  // Pull: decode's free blocks 20.. receive prefill's blocks 10..
  const mine = hello.blocks.map((_, i) => 20 + i);
  const pull: TransferDescriptor[] = hello.blocks.map((b, i) => ({
    local: pool,
    localOffset: mine[i]! * BLOCK_BYTES,
    remote: hello.region,
    remoteOffset: b * BLOCK_BYTES,
    length: BLOCK_BYTES,
  }));
  const read = await agent.read(peer, pull, { notification: JSON.stringify({ freed: hello.blocks }) });
  if (!verify(pool, mine)) throw new Error('pulled KV blocks differ from what prefill wrote');

  // Push: prefill writes into blocks decode reserved (0..), and notifies once they have landed.
  const zero = new Uint8Array(BLOCK_BYTES);
  for (let b = 0; b < POOL_BLOCKS; b++) writeBlock(pool, b, zero);
  const reserved = hello.blocks.map((_, i) => i);
  const landed = inbox.next();
  await agent.sendNotification(peer, JSON.stringify({ pushTo: { metadata: agent.getLocalMetadata().toString('base64'), region: pool.id, blocks: reserved } }));
  const note = await landed;
  if (!verify(pool, reserved)) throw new Error('pushed KV blocks differ from what prefill wrote');
  console.log(`[decode] notification from ${note.value?.from}: ${note.value?.data.toString()}`);
  await new Promise((r) => child.once('exit', r));
  await agent.close();
  return [read];
}

const { values } = parseArgs({
  options: { role: { type: 'string', default: 'decode' }, provider: { type: 'string' }, device: { type: 'string', default: 'host' } },
});
if (values.role === 'prefill') {
  await prefill(values.provider!, values.device);
} else {
  const rows = [];
  for (const provider of values.provider ? [values.provider] : ['tcp', 'shm']) {
    const [read] = await decode(provider, values.device);
    rows.push({
      provider: read!.provider,
      backend: read!.backend,
      op: read!.op,
      blocks: read!.descriptors,
      MiB: +(read!.bytes / 2 ** 20).toFixed(1),
      ms: +read!.durationMs.toFixed(2),
      'GB/s': +read!.gbps.toFixed(2),
      rails: read!.rails.join(','),
      path: read!.path,
      verified: true,
    });
  }
  console.log(`KV blocks of ${BLOCK_BYTES} bytes (${LAYERS} layers × K,V × ${KV_HEADS} heads × ${TOKENS_PER_BLOCK} tokens × ${HEAD_DIM} dim, f16)`);
  console.table(rows);
}
