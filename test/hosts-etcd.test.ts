// Issue 19's deployment shape on three simulated hosts (test/helpers/hosts.ts), with no static address
// anywhere: host 0 runs etcd, the frontend (`kvfabric frontend`) and the prefill worker; hosts 1 and 2 run a
// decode worker each. Every process is in its host's network and pid namespace and listens on its host's IP;
// workers register with `--etcd http://<host 0>:2379` and the frontend finds them there. Requests come from
// this process's namespace, another machine on the bridge, to the frontend's routable address:
//   - the workers' etcd entries carry their hosts' addresses, and the frontend lists all three through etcd;
//   - completions are pulled over the fabric (mode 'pull', path 'fabric', tcp) by both decode workers;
//   - scripts/test-inference.sh, the deployment check, passes against http://<host 0>:<port>.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Etcd3 } from 'etcd3';

import type { KvProof } from '../src/serve/flow.js';
import { findEtcd, startEtcd, stopEtcd, type EtcdServer } from './helpers/etcd.js';
import { Hosts, hostsUnavailable, type Host } from './helpers/hosts.js';
import { ROOT, startCli, startWorkerOn, stop, tinyModel, toolEnv, waitFor, type Proc } from './helpers/serve.js';

const ETCD = findEtcd();
const SKIP = hostsUnavailable() || (ETCD ? false : 'no etcd binary (/usr/bin/etcd or etcd on PATH); install etcd-server to run these tests');
const PREFIX = `/kvf-hosts-test/${process.pid}/`;
/** Waits bound a hang; they measure nothing. */
const WAIT = 20_000;
const PROMPTS = ['the quick brown fox', 'a lazy dog', 'seven wizards quietly hex jovial kings', 'hello there, how are you today?'];

interface HealthBody {
  workers: { id: string | null; role: string; source: string; healthy: boolean }[];
}

describe('etcd discovery across three simulated hosts, frontend on a host IP', { skip: SKIP }, () => {
  const model = SKIP ? '' : tinyModel();
  const modelName = model
    .split('/')
    .pop()!
    .replace(/\.gguf$/, '');
  let net: Hosts;
  let etcd: EtcdServer;
  let kv: Etcd3;
  const procs: Proc[] = [];
  let frontend: Proc;

  const worker = async (role: 'prefill' | 'decode', host: Host, id: string): Promise<Proc> => {
    const p = await startWorkerOn(net, host, role, { model, id, extra: ['--etcd', etcd.url, '--etcd-prefix', PREFIX, '--etcd-ttl', '5'] });
    procs.push(p);
    return p;
  };
  const complete = async (prompt: string): Promise<{ text: string; proof: KvProof }> => {
    const res = await fetch(`${frontend.ready.address}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: modelName, prompt, max_tokens: 8, temperature: 0 }),
      signal: AbortSignal.timeout(WAIT),
    });
    const body = (await res.json()) as { choices?: { text: string }[]; kvfabric?: KvProof };
    assert.equal(res.status, 200, JSON.stringify(body));
    assert.ok(body.kvfabric, 'the response carries the kvfabric proof');
    return { text: body.choices![0]!.text, proof: body.kvfabric };
  };

  before(async () => {
    net = Hosts.create(3);
    const [h0, h1, h2] = net.hosts as [Host, Host, Host];
    etcd = await startEtcd(ETCD!, WAIT, { prefix: net.prefix(h0), ip: h0.ip });
    kv = new Etcd3({ hosts: etcd.url });
    await Promise.all([worker('prefill', h0, 'prefill-h0'), worker('decode', h1, 'decode-h1'), worker('decode', h2, 'decode-h2')]);
    frontend = await startCli(
      ['frontend', '--model', model, '--listen', `${h0.ip}:0`, '--etcd', etcd.url, '--etcd-prefix', PREFIX, '--health-interval-ms', '200'],
      {},
      net.prefix(h0),
    );
    procs.push(frontend);
  });
  after(async () => {
    // The frontend first, then the workers (they revoke their leases, so etcd must still be up); a process
    // still draining after 10 s is killed (unshare --kill-child takes it along).
    if (frontend) await Promise.race([stop(frontend), new Promise((r) => setTimeout(r, 10_000))]);
    await Promise.race([Promise.all(procs.map((p) => stop(p))), new Promise((r) => setTimeout(r, 10_000))]);
    for (const p of procs) p.child.kill('SIGKILL');
    kv?.close();
    if (etcd) await stopEtcd(etcd);
    net?.destroySync();
  });

  test('workers register their host addresses in etcd on host 0; the frontend there finds all three', async () => {
    const [h0, h1, h2] = net.hosts as [Host, Host, Host];
    assert.ok(frontend.ready.address.startsWith(`http://${h0.ip}:`), frontend.ready.address);
    const entries = Object.fromEntries(
      Object.entries(await kv.getAll().prefix(PREFIX).strings()).map(([k, v]) => [k.slice(PREFIX.length), JSON.parse(v) as { address: string }]),
    );
    assert.deepEqual(Object.keys(entries).sort(), ['decode-h1', 'decode-h2', 'prefill-h0']);
    for (const [id, host] of [
      ['prefill-h0', h0],
      ['decode-h1', h1],
      ['decode-h2', h2],
    ] as const) {
      assert.ok(entries[id]!.address.startsWith(`${host.ip}:`), `${id} at ${entries[id]!.address}`);
    }
    // /health from this namespace, across the bridge: the router's view, sources included.
    await waitFor(
      async () => {
        const res = await fetch(`${frontend.ready.address}/health`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined);
        const body = res ? ((await res.json()) as HealthBody) : undefined;
        return body?.workers.filter((w) => w.source === 'etcd' && w.healthy).length === 3;
      },
      'the frontend to list the three workers through etcd, healthy',
      WAIT,
    );
  });

  test('completions are pulled over the fabric across the veths, by both decode workers', async () => {
    const decodedBy = new Set<string>();
    for (const prompt of [...PROMPTS, ...PROMPTS]) {
      const { text, proof } = await complete(prompt);
      assert.ok(text.length > 0, prompt);
      assert.equal(proof.mode, 'pull', proof.fallback_reason ?? '');
      assert.equal(proof.path, 'fabric');
      assert.equal(proof.op, 'READ');
      assert.equal(proof.provider, 'tcp;ofi_rxm');
      assert.equal(proof.prefill_worker, 'prefill-h0');
      assert.ok(proof.bytes > 0);
      decodedBy.add(proof.decode_worker);
    }
    assert.deepEqual([...decodedBy].sort(), ['decode-h1', 'decode-h2']);
  });

  test("scripts/test-inference.sh passes against the frontend's routable address", async () => {
    const r = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile(
        'bash',
        [join(ROOT, 'scripts', 'test-inference.sh'), 'hosts'],
        { env: toolEnv({ KVF_URL: frontend.ready.address, EXPECT_PROVIDER: 'tcp', TIMEOUT: '20' }), timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
    );
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`testing hosts at http://${net.hosts[0]!.ip.replace(/\./g, '\\.')}:\\d+`));
    assert.match(
      r.stdout,
      /PASS: KV over LIBFABRIC\/tcp;ofi_rxm \(path fabric\), rails \[0\], READ [1-9]\d* bytes .* prefill-h0 -> decode-h[12] \(mode pull\)/,
    );
  });
});
