// Writes the seed corpus (fuzz/corpus/<target>/seed-*): a few valid and edge-case inputs per target, so the
// fuzzers start from inputs that pass the outer checks. Deterministic; rerun after a format change:
//   node --import tsx fuzz/tools/make-seeds.ts
// (The C++ GGUF target is also seeded at fuzz time with the whole tiny model, too large to commit.)
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { encodeGrant, type GrantDescription } from '../../src/fabric/grants.js';
import { encodeMetadata, type AgentDescription } from '../../src/fabric/metadata.js';
import { parseGgufMetadata } from '../../src/engine/gguf-metadata.js';
import { WorkerService, type KvHandle } from '../../src/serve/rpc.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const corpus = (target: string): string => {
  const dir = join(root, 'fuzz', 'corpus', target);
  mkdirSync(dir, { recursive: true });
  return dir;
};
const write = (target: string, name: string, ...parts: Uint8Array[]): void => writeFileSync(join(corpus(target), `seed-${name}`), Buffer.concat(parts));
const mode = (m: number): Buffer => Buffer.from([m]);

// --- metadata and grants
const nonce = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const agents: Record<string, AgentDescription> = {
  minimal: { name: 'a', provider: 'tcp;ofi_rxm', virtAddr: false, rails: [new Uint8Array(16).fill(2)], regions: [] },
  regions: {
    name: 'prefill-0',
    provider: 'efa',
    virtAddr: true,
    rails: [new Uint8Array(32).fill(7), new Uint8Array(32).fill(8)],
    regions: [
      { id: 1, length: 4096, base: 0x7f0000000000n, keys: [11n, 12n] },
      { id: 7, length: 1 << 20, base: 0x7f0000100000n, keys: [13n, 14n], share: { fd: 21, inode: 999n, offset: 4096 } },
    ],
    host: { id: 'host-1', pid: 4242, table: { fd: 22, inode: 1234n, nonce } },
  },
  shm: {
    name: 'decode-0',
    provider: 'shm',
    virtAddr: true,
    rails: [Buffer.from('fi_shm://4242\0')],
    regions: [{ id: 0, length: 64, base: 0n, keys: [0n] }],
    host: { id: 'h', pid: 1 },
  },
};
for (const [name, desc] of Object.entries(agents)) {
  const blob = encodeMetadata(desc);
  write('metadata', `metadata-${name}`, mode(0), blob);
  write('metadata', `metadata-${name}-fixed`, mode(1), blob);
}
const grants: Record<string, GrantDescription> = {
  read: { id: 5, access: 'read', base: 0x7f0000000000n, length: 8192, owner: 'prefill-0', digest: nonce, keys: [1n, 2n] },
  write: { id: 262149, access: 'write', base: 0n, length: 1, owner: 'd', digest: new Uint8Array(16), keys: [3n], share: { fd: 9, inode: 77n, offset: 0 } },
};
for (const [name, g] of Object.entries(grants)) {
  write('metadata', `grant-${name}`, mode(2), encodeGrant(g));
  write('metadata', `grant-${name}-fixed`, mode(3), encodeGrant(g));
}

// --- KV handles and the messages that carry them (tiny model layout: 2 layers, 2 KV heads, head dim 16, f16)
const layout = { numLayers: 2, kvHeads: 2, headDim: 16, tokensPerBlock: 16, dtype: 'f16', blockBytes: 2 * 2 * 2 * 16 * 16 * 2 };
const handle = (access: string, blocks: number[], tokens: number, grantsOf: GrantDescription[]): KvHandle => ({
  requestId: 'cmpl-1',
  workerId: 'prefill-0',
  agentName: 'prefill-0',
  agentMetadata: encodeMetadata(agents.regions!),
  regionId: 7,
  blocks,
  layout,
  tokens,
  leaseExpiresUnixMs: 4_102_444_800_000,
  access,
  mac: new Uint8Array(32).fill(0xab),
  grants: grantsOf.map(encodeGrant),
});
const pull = handle('read', [3, 4, 9], 40, [
  { ...grants.read!, length: 2 * layout.blockBytes },
  { ...grants.read!, id: 6, length: layout.blockBytes },
]);
const prompt = Array.from({ length: 40 }, (_, i) => i + 3);
const prefill = { firstToken: 17, samplerState: 99, kv: pull, push: null, workerId: 'prefill-0', prefillMs: 3.5, mac: new Uint8Array(32) };
const decode = (extra: object) =>
  WorkerService.Decode!.requestSerialize({
    requestId: 'cmpl-1',
    prompt,
    sampling: { temperature: 0, topK: 0, topP: 1, seed: 1 },
    maxTokens: 8,
    endTokens: [2],
    fallbackReason: '',
    ...extra,
  });
const prefillReq = WorkerService.Prefill!.requestSerialize({
  requestId: 'cmpl-1',
  tokens: prompt,
  sampling: null,
  leaseMs: 5000,
  pushTo: handle('write', [0, 1, 2], 40, [{ ...grants.write!, length: 3 * layout.blockBytes }]),
});
for (const sign of [0, 3]) {
  write('kv-handle', `prefill-push-${sign}`, mode(sign), prefillReq);
  write('kv-handle', `decode-pull-${sign}`, mode(1 + sign), decode({ prefill }));
  write('kv-handle', `decode-reserved-${sign}`, mode(1 + sign), decode({ prefill: { ...prefill, kv: null }, reserved: handle('write', [5], 40, []) }));
  write('kv-handle', `handle-${sign}`, mode(2 + sign), WorkerService.Reserve!.responseSerialize(pull));
}

// --- GGUF: the tiny model's header and metadata, its tensor count set to 0 so the file ends there.
const model = join(mkdtempSync(join(tmpdir(), 'kvf-seeds-')), 'tiny-llama.gguf');
execFileSync(process.execPath, [join(root, 'scripts', 'make-tiny-model.mjs'), model]);
const bytes = readFileSync(model);
const head = Buffer.from(bytes.subarray(0, parseGgufMetadata(bytes).tensorInfoOffset));
head.writeBigUInt64LE(0n, 8);
write('gguf', 'tiny-llama-metadata', head);
write('gguf-native', 'tiny-llama-metadata', head);
write('gguf', 'header-only', Buffer.from('GGUF\x03\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0', 'latin1'));

// --- HTTP bodies: byte 0 picks the route (0 completions, 1 chat)
const bodies: [number, string, unknown][] = [
  [0, 'completion', { model: 'tiny-llama', prompt: 'The quick brown fox', max_tokens: 4, temperature: 0 }],
  [0, 'completion-ids', { model: 'tiny-llama', prompt: [1, 2, 3], max_tokens: 1, stream: true, stream_options: { include_usage: true }, stop: ['\n'] }],
  [0, 'completion-array', { model: 'tiny-llama', prompt: ['hi'], top_p: 0.5, top_k: 3, seed: 7, n: 1, user: 'u' }],
  [
    1,
    'chat',
    {
      model: 'tiny-llama',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'Hello' },
      ],
      max_completion_tokens: 3,
    },
  ],
  [
    1,
    'chat-parts',
    {
      model: 'tiny-llama',
      messages: [
        {
          role: 'developer',
          content: [
            { type: 'text', text: 'a' },
            { type: 'text', text: 'b' },
          ],
          name: 'x',
        },
      ],
      stop: 'x',
      stream: false,
    },
  ],
  [1, 'chat-wrong-model', { model: 'other', messages: [{ role: 'assistant', content: '' }] }],
];
for (const [route, name, body] of bodies) write('http', name, mode(route), Buffer.from(JSON.stringify(body)));

// --- notifications (native/core/notification.h): "KVFN", u8 version 1, u8 name length, u16 0, u32 payload length, name, payload
const note = (from: string, payload: Buffer): Buffer => {
  const h = Buffer.alloc(12);
  h.write('KVFN', 0, 'latin1');
  h[4] = 1;
  h[5] = Buffer.byteLength(from);
  h.writeUInt32LE(payload.length, 8);
  return Buffer.concat([h, Buffer.from(from), payload]);
};
write('notification-native', 'release', note('decode-0', Buffer.from(JSON.stringify({ release: 'cmpl-1', mac: 'ab'.repeat(32) }))));
write('notification-native', 'empty-payload', note('p', Buffer.alloc(0)));
console.log('seeds written under fuzz/corpus/');
