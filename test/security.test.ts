// The trust boundary, tried as an attacker would: real worker processes (the same-host fast path on, as
// `kvfabric serve` runs them), a real victim process whose memory is checked from inside, and gRPC calls
// without the cluster token, with forged, altered, replayed and expired KV handles, with other requests'
// handles, with RPCs of the other role and with huge leases.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as grpc from '@grpc/grpc-js';

import { Frontend } from '../src/serve/frontend/frontend.js';
import { frontendConfig } from '../src/serve/config.js';
import {
  RegistryService,
  WorkerService,
  unary,
  workerClient,
  registryClient,
  type DecodeEvent,
  type DecodeRequest,
  type KvHandle,
  type PrefillResponse,
  type WorkerClient,
} from '../src/serve/rpc.js';
import { AUTH_HEADER, ClusterAuth } from '../src/serve/security/auth.js';
import { HandleSigner } from '../src/serve/security/handles.js';
import { blockRuns } from '../src/kv/plan.js';
import { decodeGrant } from '../src/fabric/grants.js';
import { PeerProcess, readProcessMemory, zeroHash, type PeerError } from './helpers/peers.js';
import { AUTH, CLUSTER, ROOT, SECRETS, health, poolAtBaseline, quietLog, startStack, tinyModel, toolEnv, type Stack } from './helpers/serve.js';

const MAX_LEASE_MS = 1500;
const PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22];

/** Resolves with the refusal's gRPC status and kvfabric code; fails the test if the call succeeds. */
async function refused(call: Promise<unknown>): Promise<{ status: grpc.status; code: string }> {
  const err = (await call.then(
    () => assert.fail('the call was accepted'),
    (e: unknown) => e,
  )) as grpc.ServiceError;
  return { status: err.code, code: String(err.metadata?.get('kvf-code')[0]) };
}

/** All events of a Decode stream (rejects with the stream's error status). */
function decodeAll(client: WorkerClient, req: Partial<DecodeRequest>): Promise<DecodeEvent[]> {
  return new Promise((resolve, reject) => {
    const events: DecodeEvent[] = [];
    const stream = client.decode(req, { deadline: Date.now() + 10_000 });
    stream.on('data', (e: DecodeEvent) => events.push(e));
    stream.on('error', reject);
    stream.on('end', () => resolve(events));
  });
}

/** A client that sends no proof, or the proofs of another cluster's token. */
function rawWorkerClient(address: string): WorkerClient {
  const Ctor = grpc.makeGenericClientConstructor(WorkerService, 'Worker');
  return new Ctor(address, grpc.credentials.createInsecure()) as unknown as WorkerClient;
}

describe('trust boundary', () => {
  let stack: Stack;
  let prefill: WorkerClient;
  let decode: WorkerClient;
  let victim: PeerProcess;
  let victimMetadata: Buffer;
  let victimRegion: number;
  const victimBytes = 4 << 20;
  const victimHash = (): Promise<string> => victim.request({ cmd: 'hash', region: 'secret', ranges: [[0, victimBytes]] });

  before(async () => {
    // KVF_FAST_PATH=1: the path the original attack took (cross-memory attach into the victim).
    stack = await startStack(tinyModel(), 'tcp', {}, { extra: ['--max-lease-ms', String(MAX_LEASE_MS)], env: { KVF_FAST_PATH: '1' } });
    prefill = workerClient(stack.prefill.ready.address, AUTH);
    decode = workerClient(stack.decode.ready.address, AUTH);
    victim = await PeerProcess.spawn('victim');
    await victim.create('victim', 'tcp');
    victimRegion = await victim.alloc('secret', victimBytes, 'random');
    victimMetadata = Buffer.from(await victim.request({ cmd: 'metadata' }), 'base64');
  });

  after(async () => {
    prefill?.close();
    decode?.close();
    await victim?.close().catch(() => victim.kill());
    await stack?.close();
  });

  /** A real write handle of the decode worker (its layout and blocks are what a forger would copy). */
  const reserve = (requestId: string): Promise<KvHandle> => unary(decode, decode.reserve, { requestId, tokens: PROMPT.length, maxTokens: 4 }, 5000);
  /** That handle re-aimed at the victim process: its agent, its region. */
  const aimAtVictim = (h: KvHandle, mac: Uint8Array | null): KvHandle => ({
    ...h,
    agentName: 'victim',
    agentMetadata: victimMetadata,
    regionId: victimRegion,
    mac,
  });

  test('calls without the cluster token are refused before any work, as are wrong, replayed and misdirected proofs', async () => {
    const before = await victimHash();
    const path = '/kvfabric.v1.Worker/Health';
    const raw = rawWorkerClient(stack.prefill.ready.address);
    const other = workerClient(stack.prefill.ready.address, ClusterAuth.fromConfig({ clusterToken: randomBytes(24).toString('hex') }));
    try {
      for (const client of [raw, other]) {
        assert.deepEqual(await refused(unary(client, client.health, {}, 5000)), { status: grpc.status.UNAUTHENTICATED, code: 'KVF_ERR_UNAUTHENTICATED' });
        const forged = aimAtVictim(await reserve(`unauth-${client === raw ? 'raw' : 'other'}`), randomBytes(32));
        const r = await refused(unary(client, client.prefill, { requestId: 'x', tokens: PROMPT, pushTo: forged }, 5000));
        assert.equal(r.code, 'KVF_ERR_UNAUTHENTICATED');
      }
      // A captured proof works once, for its own method only.
      const proof = AUTH.prove(path);
      const withProof = (p: string): grpc.Metadata => {
        const m = new grpc.Metadata();
        m.set(AUTH_HEADER, p);
        return m;
      };
      const call = (method: 'health' | 'release', p: string) =>
        new Promise((resolve, reject) =>
          (raw[method] as unknown as (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: unknown, v: unknown) => void) => void).call(
            raw,
            { requestId: 'x' },
            withProof(p),
            { deadline: Date.now() + 5000 },
            (e, v) => (e ? reject(e) : resolve(v)),
          ),
        );
      assert.equal(((await call('health', proof)) as { role: string }).role, 'prefill');
      assert.equal((await refused(call('health', proof))).code, 'KVF_ERR_UNAUTHENTICATED');
      assert.equal((await refused(call('release', AUTH.prove(path)))).code, 'KVF_ERR_UNAUTHENTICATED');
      assert.equal((await refused(call('health', AUTH.prove(path, Date.now() - 120_000)))).code, 'KVF_ERR_UNAUTHENTICATED');
    } finally {
      raw.close();
      other.close();
    }
    assert.equal(await victimHash(), before);
    await poolAtBaseline(stack.prefill.ready.address);
  });

  test('the frontend registry refuses registrations without the token', async () => {
    const frontend = await Frontend.start(
      frontendConfig({ flags: { ...CLUSTER, model: tinyModel(), listen: '127.0.0.1:0', registryListen: '127.0.0.1:0' }, env: {} }),
      quietLog,
    );
    try {
      const Ctor = grpc.makeGenericClientConstructor(RegistryService, 'Registry');
      const raw = new Ctor(frontend.registryAddress!, grpc.credentials.createInsecure()) as unknown as ReturnType<typeof registryClient>;
      const rogue = { workerId: 'rogue', role: 'decode', address: '127.0.0.1:9', ttlMs: 60_000 };
      assert.equal((await refused(unary(raw, raw.register, rogue, 5000))).code, 'KVF_ERR_UNAUTHENTICATED');
      assert.equal(frontend.router.workers().length, 0);
      const member = registryClient(frontend.registryAddress!, AUTH);
      assert.equal((await unary(member, member.register, rogue, 5000)).ok, true);
      assert.equal(frontend.router.workers().length, 1);
      raw.close();
      member.close();
    } finally {
      await frontend.close();
    }
  });

  test('each worker serves only the RPCs of its role', async () => {
    const forged = aimAtVictim(await reserve('role-1'), randomBytes(32));
    const wrongRole = { status: grpc.status.PERMISSION_DENIED, code: 'KVF_ERR_WRONG_ROLE' };
    assert.deepEqual(await refused(unary(decode, decode.prefill, { requestId: 'role-2', tokens: PROMPT, pushTo: forged }, 5000)), wrongRole);
    assert.deepEqual(await refused(unary(prefill, prefill.reserve, { requestId: 'role-3', tokens: 4, maxTokens: 4 }, 5000)), wrongRole);
    assert.deepEqual(await refused(decodeAll(prefill, { requestId: 'role-4', prompt: PROMPT, maxTokens: 2 })), wrongRole);
    await unary(decode, decode.release, { requestId: 'role-1' }, 5000);
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('a forged push_to handle is refused and no byte reaches the victim process; the check sees writes when they happen', async () => {
    const before = await victimHash();
    const real = await reserve('push-1');
    const badHandle = { status: grpc.status.PERMISSION_DENIED, code: 'KVF_ERR_BAD_HANDLE' };
    const outsider = new HandleSigner(randomBytes(32));
    for (const pushTo of [aimAtVictim(real, randomBytes(32)), aimAtVictim(real, null), outsider.sign(aimAtVictim(real, null))]) {
      assert.deepEqual(await refused(unary(prefill, prefill.prefill, { requestId: 'push-1', tokens: PROMPT, pushTo }, 5000)), badHandle);
    }
    // Another request's handle, and a handle for reading where writing is asked.
    assert.deepEqual(await refused(unary(prefill, prefill.prefill, { requestId: 'push-2', tokens: PROMPT, pushTo: real }, 5000)), badHandle);
    // Even a holder of the cluster's handle key cannot aim a worker at a process that granted it nothing: the
    // decode worker's grants name their owner, and the victim's pool is reached only through the victim's own.
    const insider = new HandleSigner(Buffer.from(SECRETS.KVF_HANDLE_KEY));
    const r = await refused(unary(prefill, prefill.prefill, { requestId: 'push-1', tokens: PROMPT, pushTo: insider.sign(aimAtVictim(real, null)) }, 5000));
    assert.equal(r.code, 'KVF_ERR_BAD_METADATA');
    assert.equal(await victimHash(), before, 'the victim process memory changed');
    // Control: with a window the victim granted, the same push lands, so the hash above would have seen a write.
    const granted = await victim.grant('secret', 0, real.blocks.length * real.layout!.blockBytes, 'write');
    const window = { ...aimAtVictim(real, null), blocks: real.blocks.map((_, i) => i), grants: [Buffer.from(granted.bytes, 'base64')] };
    const res = await unary(prefill, prefill.prefill, { requestId: 'push-1', tokens: PROMPT, pushTo: insider.sign(window) }, 5000);
    assert.ok(res.push!.bytes > 0);
    assert.notEqual(await victimHash(), before);
    await victim.revoke(granted.id);
    await unary(decode, decode.release, { requestId: 'push-1' }, 5000);
    await poolAtBaseline(stack.prefill.ready.address);
  });

  test('Decode refuses forged, altered, foreign, replayed and expired handles; the genuine one works once', async () => {
    const badHandle = { status: grpc.status.PERMISSION_DENIED, code: 'KVF_ERR_BAD_HANDLE' };
    const prefillA: PrefillResponse = await unary(prefill, prefill.prefill, { requestId: 'req-a', tokens: PROMPT }, 5000);
    const kv = prefillA.kv!;
    assert.equal(kv.access, 'read');
    const attempt = (requestId: string, p: PrefillResponse) => refused(decodeAll(decode, { requestId, prompt: PROMPT, maxTokens: 3, prefill: p }));
    // Pointed at the victim process; blocks changed; positions changed; the response altered.
    assert.deepEqual(await attempt('req-a', { ...prefillA, kv: aimAtVictim(kv, kv.mac) }), badHandle);
    assert.deepEqual(await attempt('req-a', { ...prefillA, kv: { ...kv, blocks: [kv.blocks[0]! + 1, ...kv.blocks.slice(1)] } }), badHandle);
    assert.deepEqual(await attempt('req-a', { ...prefillA, kv: { ...kv, tokens: kv.tokens + 16 } }), badHandle);
    assert.deepEqual(await attempt('req-a', { ...prefillA, firstToken: prefillA.firstToken + 1 }), badHandle);
    // Request B naming request A's blocks (A's whole, genuine prefill result).
    assert.deepEqual(await attempt('req-b', prefillA), badHandle);
    // The genuine hand-off works, once.
    const events = await decodeAll(decode, { requestId: 'req-a', prompt: PROMPT, maxTokens: 3, prefill: prefillA });
    const started = events.find((e) => e.event === 'started');
    assert.equal(started?.event === 'started' && started.started.transfer?.op, 'READ');
    assert.deepEqual(await attempt('req-a', prefillA), badHandle);
    // Expired: the lease (here the worker's maximum) ran out before Decode came.
    const prefillC: PrefillResponse = await unary(prefill, prefill.prefill, { requestId: 'req-c', tokens: PROMPT, leaseMs: 100 }, 5000);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await attempt('req-c', prefillC), badHandle);
    await poolAtBaseline(stack.prefill.ready.address);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('a push reservation is taken over once, by its own handle', async () => {
    const reserved = await reserve('res-1');
    const badHandle = { status: grpc.status.PERMISSION_DENIED, code: 'KVF_ERR_BAD_HANDLE' };
    const push: PrefillResponse = await unary(prefill, prefill.prefill, { requestId: 'res-1', tokens: PROMPT, pushTo: reserved }, 5000);
    const decodeIt = () => decodeAll(decode, { requestId: 'res-1', prompt: PROMPT, maxTokens: 3, prefill: push, reserved });
    assert.deepEqual(
      await refused(decodeAll(decode, { requestId: 'res-1', prompt: PROMPT, maxTokens: 3, prefill: push, reserved: { ...reserved, blocks: [0] } })),
      badHandle,
    );
    assert.ok((await decodeIt()).some((e) => e.event === 'done'));
    assert.deepEqual(await refused(decodeIt()), badHandle);
    await poolAtBaseline(stack.decode.ready.address);
  });

  test('leases are capped by the worker, never by the caller', async () => {
    for (const leaseMs of [4_294_967_295, 2 ** 31, 86_400_000]) {
      const t0 = Date.now();
      const h = await unary(decode, decode.reserve, { requestId: `lease-${leaseMs}`, tokens: 4, maxTokens: 4, leaseMs }, 5000);
      assert.ok(h.leaseExpiresUnixMs <= Date.now() + MAX_LEASE_MS, `lease of ${h.leaseExpiresUnixMs - t0} ms`);
      assert.ok(h.leaseExpiresUnixMs >= t0 + MAX_LEASE_MS - 50, 'an overflowing lease must not shrink to 1 ms either');
      const p: PrefillResponse = await unary(prefill, prefill.prefill, { requestId: `lease-${leaseMs}`, tokens: PROMPT, leaseMs }, 5000);
      assert.ok(p.kv!.leaseExpiresUnixMs <= Date.now() + MAX_LEASE_MS);
    }
    assert.ok((await health(stack.decode.ready.address)).heldRequests >= 3);
    // Nobody takes them: both pools are whole again once the capped leases end.
    await poolAtBaseline(stack.decode.ready.address, MAX_LEASE_MS + 3000);
    await poolAtBaseline(stack.prefill.ready.address, MAX_LEASE_MS + 3000);
  });

  test("remote access ends with the request, and freed blocks are cleared: the prefill pool holds no finished request's K/V", async () => {
    // The reader process is up before the prefill: the stack caps leases at MAX_LEASE_MS, and starting a process
    // (slow under the sanitizer) must not eat into the hold it is to read within.
    const reader = await PeerProcess.spawn('reader');
    let grants: Uint8Array[] | undefined;
    try {
      await reader.create('reader', 'tcp');
      const p: PrefillResponse = await unary(prefill, prefill.prefill, { requestId: 'clear-1', tokens: PROMPT }, 5000);
      const kv = p.kv!;
      grants = kv.grants;
      const size = kv.layout!.blockBytes;
      const bytes = kv.blocks.length * size;
      // A fabric peer with the prefill agent's metadata and the request's grants reads the blocks while held ...
      await reader.alloc('sink', bytes, 'zero');
      const peer = await reader.request({ cmd: 'load', metadata: Buffer.from(kv.agentMetadata).toString('base64') });
      assert.deepEqual(peer.regions, [], 'the pool itself is not advertised');
      const runs = blockRuns(kv.blocks);
      const ids = await Promise.all(kv.grants.map((g) => reader.addGrant(peer.name, Buffer.from(g).toString('base64'))));
      const descs = runs.map((run, i) => ({
        local: 'sink',
        localOffset: runs.slice(0, i).reduce((n, r) => n + r.count * size, 0),
        remote: ids[i]!,
        remoteOffset: 0,
        length: run.count * size,
      }));
      const read = () => reader.request({ cmd: 'transfer', spec: { op: 'READ', peer: peer.name, descs, timeoutMs: 5000 } });
      await read();
      const zero = zeroHash(bytes);
      assert.notEqual(await reader.request({ cmd: 'hash', region: 'sink', ranges: [[0, bytes]] }), zero, 'the held blocks hold K/V');
      // ... and not after the release: the grant is revoked before the blocks go back to the pool.
      await unary(prefill, prefill.release, { requestId: 'clear-1' }, 5000);
      await reader.request({ cmd: 'fill', region: 'sink', ranges: [[0, bytes]] });
      const refusedRead = (await read().then(
        () => assert.fail('a revoked grant still reads'),
        (e: PeerError) => e,
      )) as PeerError;
      assert.match(String(refusedRead.remote?.code), /^KVF_ERR_/);
    } finally {
      await reader.close().catch(() => reader.kill());
    }
    // The worker's own memory (read from outside through /proc): zeros once the blocks are back in the pool.
    await poolAtBaseline(stack.prefill.ready.address);
    for (const g of grants!) {
      const { base, length } = decodeGrant(g);
      assert.ok(
        readProcessMemory(stack.prefill.child.pid!, base, length).every((b) => b === 0),
        'freed blocks still hold K/V',
      );
    }
  });

  test('/health does not publish worker addresses', async () => {
    const text = await (await fetch(`${stack.url}/health`)).text();
    for (const w of [stack.prefill, stack.decode]) assert.ok(!text.includes(w.ready.address.split(':').pop()!), `${w.ready.address} in /health`);
    assert.equal((JSON.parse(text) as { workers: unknown[] }).workers.length, 2);
  });
});

describe('mutual TLS on the control plane', () => {
  let stack: Stack;
  let creds: string;
  const tls = (dir: string) => ({
    tlsCert: join(dir, 'tls.crt'),
    tlsKey: join(dir, 'tls.key'),
    tlsCa: join(dir, 'ca.crt'),
    tlsClientAuth: true,
    tlsServerName: 'kvfabric',
  });
  const makeCreds = (): string => {
    const dir = join(mkdtempSync(join(tmpdir(), 'kvf-tls-')), 'secrets');
    execFileSync('bash', [join(ROOT, 'scripts', 'make-cluster-secrets.sh'), dir], { env: toolEnv(), stdio: 'ignore' });
    return dir;
  };

  before(async () => {
    creds = makeCreds();
    const t = tls(creds);
    const env = { KVF_TLS_CERT: t.tlsCert, KVF_TLS_KEY: t.tlsKey, KVF_TLS_CA: t.tlsCa, KVF_TLS_CLIENT_AUTH: 'true', KVF_TLS_SERVER_NAME: 'kvfabric' };
    stack = await startStack(tinyModel(), 'tcp', t, { env });
  });

  after(async () => {
    await stack?.close();
  });

  test('a request goes through workers that speak only mutual TLS', async () => {
    const res = await fetch(`${stack.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: stack.modelName, prompt: 'hello there', max_tokens: 4, temperature: 0 }),
    });
    const body = (await res.json()) as { kvfabric: { op: string; bytes: number } };
    assert.equal(res.status, 200);
    assert.equal(body.kvfabric.op, 'READ');
    assert.ok(body.kvfabric.bytes > 0);
  });

  test('plaintext clients, clients without a certificate and clients of another CA are refused, token or not', async () => {
    const address = stack.prefill.ready.address;
    const health = (client: WorkerClient) => unary(client, client.health, {}, 5000);
    const noCert = (() => {
      const Ctor = grpc.makeGenericClientConstructor(WorkerService, 'Worker');
      const c = AUTH.clientOptions();
      return new Ctor(address, grpc.credentials.createSsl(readFileSync(join(creds, 'ca.crt'))), {
        ...c.options,
        'grpc.ssl_target_name_override': 'kvfabric',
      }) as unknown as WorkerClient;
    })();
    const clients = [workerClient(address, AUTH), noCert, workerClient(address, ClusterAuth.fromConfig({ ...CLUSTER, ...tls(makeCreds()) }))];
    for (const client of clients) {
      const err = (await health(client).then(
        () => assert.fail('accepted'),
        (e: grpc.ServiceError) => e,
      )) as grpc.ServiceError;
      assert.equal(err.code, grpc.status.UNAVAILABLE, err.message);
      client.close();
    }
    // The control: the cluster's own certificate and token.
    const member = workerClient(address, ClusterAuth.fromConfig({ ...CLUSTER, ...tls(creds) }));
    assert.equal((await health(member)).role, 'prefill');
    member.close();
  });
});
