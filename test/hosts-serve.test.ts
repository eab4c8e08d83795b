// The disaggregated stack on three simulated hosts (test/helpers/hosts.ts): a prefill worker and two decode
// workers, each in its own network and pid namespace and listening on its host's address; the frontends run
// in this process and reach them over the bridge. KV crosses the veths through the tcp provider. Output must
// equal aggregated output with the proof saying 'fabric' (never 'fallback'); a partition during a KV pull
// and during a decode stream must end in a coded error within its deadline, free every block on both sides,
// and the next request must succeed once the link is back.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import type { KvProof } from '../src/serve/flow.js';
import { frontendConfig } from '../src/serve/config.js';
import { Frontend } from '../src/serve/frontend/frontend.js';
import { Hosts, hostsUnavailable, innerPid, type Host } from './helpers/hosts.js';
import { waitForState } from './helpers/peers.js';
import { CLUSTER, health, poolAtBaseline, quietLog, startWorkerOn, stop, tinyModel, waitFor, type Proc } from './helpers/serve.js';

const SKIP = hostsUnavailable();
const PROMPTS = ['the quick brown fox', 'seven wizards quietly hex jovial kings near old stone bridges', 'a lazy dog', 'hello there, how are you today?'];
/** Decode workers give up a pull after this; the frontend a request after REQUEST_MS. */
const TRANSFER_MS = 2_000;
const REQUEST_MS = 6_000;

interface Completion {
  choices: { text: string }[];
  kvfabric: KvProof;
}

describe('serving on three simulated hosts (tcp over veths)', { skip: SKIP }, () => {
  const model = SKIP ? '' : tinyModel();
  let net: Hosts;
  const procs: Proc[] = [];
  let prefill: Proc;
  let decodes: Proc[];
  let frontend: Frontend;
  let aggregated: Frontend;

  const worker = async (role: 'prefill' | 'decode', host: Host, id: string, extra: string[] = []): Promise<Proc> => {
    const p = await startWorkerOn(net, host, role, { model, id, extra: ['--transfer-timeout-ms', String(TRANSFER_MS), ...extra] });
    procs.push(p);
    return p;
  };
  const startFrontend = (flags: Record<string, unknown>): Promise<Frontend> =>
    Frontend.start(
      frontendConfig({
        flags: { ...CLUSTER, model, listen: '127.0.0.1:0', healthIntervalMs: 200, leaseMs: 3_000, requestTimeoutMs: REQUEST_MS, ...flags },
        env: {},
      }),
      quietLog,
    );
  const complete = async (f: Frontend, prompt: string, maxTokens = 12): Promise<Completion> => {
    const res = await fetch(`${f.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        model: model
          .split('/')
          .pop()!
          .replace(/\.gguf$/, ''),
        prompt,
        max_tokens: maxTokens,
        temperature: 0,
      }),
      signal: AbortSignal.timeout(30_000),
    });
    assert.equal(res.status, 200, await res.clone().text());
    return (await res.json()) as Completion;
  };
  const allHealthy = (f: Frontend): Promise<void> => waitFor(() => f.router.workers().every((w) => w.healthy), 'workers healthy', 30_000);
  const baseline = (): Promise<void[]> => Promise.all([prefill, ...decodes].map((p) => poolAtBaseline(p.ready.address, 15_000)));
  /** SIGSTOPs (or SIGCONTs) the worker processes inside their pid namespaces. */
  const signal = async (ps: Proc[], sig: 'SIGSTOP' | 'SIGCONT'): Promise<void> => {
    for (const p of ps) {
      const pid = innerPid(p.child.pid!);
      assert.ok(pid, 'the worker runs under unshare');
      process.kill(pid, sig);
      if (sig === 'SIGSTOP') await waitForState(pid, 'T', 5_000);
    }
  };
  /** After a partition heals, TCP retransmits with backoff: requests may fall back until it catches up. */
  const recovered = async (prompt: string, expected: string): Promise<void> => {
    let last: Completion | undefined;
    await waitFor(
      async () => {
        last = await complete(frontend, prompt);
        return last.kvfabric.mode === 'pull';
      },
      'a request whose KV is pulled over the healed link',
      30_000,
    );
    assert.equal(last!.kvfabric.path, 'fabric');
    assert.equal(last!.choices[0]!.text, expected);
  };

  before(async () => {
    net = Hosts.create(3);
    [prefill, ...decodes] = await Promise.all([
      worker('prefill', net.hosts[0]!, 'prefill-h0'),
      worker('decode', net.hosts[1]!, 'decode-h1'),
      worker('decode', net.hosts[2]!, 'decode-h2'),
    ]);
    const decode = decodes.map((d) => d.ready.address);
    [frontend, aggregated] = await Promise.all([startFrontend({ prefill: [prefill.ready.address], decode }), startFrontend({ decode, mode: 'aggregated' })]);
    await Promise.all([allHealthy(frontend), allHealthy(aggregated)]);
  });
  after(async () => {
    await Promise.all([frontend?.close(), aggregated?.close()]);
    // Graceful first; a worker still draining after 10 s is killed (unshare --kill-child takes it along).
    await Promise.race([Promise.all(procs.map((p) => stop(p))), new Promise((r) => setTimeout(r, 10_000))]);
    for (const p of procs) p.child.kill('SIGKILL');
    net?.destroySync();
  });

  test('workers listen on their hosts; disaggregated output equals aggregated, KV pulled over the fabric by both decode workers', async () => {
    for (const [p, h] of [
      [prefill, net.hosts[0]!],
      [decodes[0]!, net.hosts[1]!],
      [decodes[1]!, net.hosts[2]!],
    ] as const) {
      assert.ok(p.ready.address.startsWith(`${h.ip}:`), p.ready.address);
      // The worker's fabric follows its listen address (issue 19): peers dial the host's IP, not 127.0.0.1.
      const ready = p.logs.map((l) => JSON.parse(l) as { msg?: string; fabricAddresses?: string[] }).find((l) => l.msg === 'worker ready');
      assert.deepEqual(
        ready?.fabricAddresses?.map((a) => a.split(':')[0]),
        [h.ip],
      );
    }
    const decodedBy = new Set<string>();
    for (const prompt of [...PROMPTS, ...PROMPTS]) {
      const [disagg, agg] = await Promise.all([complete(frontend, prompt), complete(aggregated, prompt)]);
      assert.equal(disagg.choices[0]!.text, agg.choices[0]!.text, prompt);
      assert.equal(disagg.kvfabric.mode, 'pull', disagg.kvfabric.fallback_reason ?? '');
      assert.equal(disagg.kvfabric.path, 'fabric');
      assert.equal(disagg.kvfabric.op, 'READ');
      assert.equal(disagg.kvfabric.provider, 'tcp;ofi_rxm');
      assert.ok(disagg.kvfabric.bytes > 0);
      assert.equal(agg.kvfabric.mode, 'aggregated');
      decodedBy.add(disagg.kvfabric.decode_worker);
    }
    assert.deepEqual([...decodedBy].sort(), ['decode-h1', 'decode-h2']);
    await baseline();
  });

  test('a prefill worker whose fabric is on loopback: decode refuses its KV at once (KVF_ERR_PEER_UNREACHABLE), not after the timeout', async () => {
    const lonely = await worker('prefill', net.hosts[0]!, 'prefill-h0-loopback', ['--fabric-address', '127.0.0.1']);
    const f = await startFrontend({ prefill: [lonely.ready.address], decode: [decodes[0]!.ready.address] });
    try {
      await allHealthy(f);
      const body = await complete(f, PROMPTS[0]!);
      assert.equal(body.kvfabric.mode, 'fallback');
      assert.match(body.kvfabric.fallback_reason!, /KVF_ERR_PEER_UNREACHABLE: .*127\.0\.0\.1:\d+/);
      assert.equal(body.choices[0]!.text, (await complete(aggregated, PROMPTS[0]!)).choices[0]!.text);
      await poolAtBaseline(lonely.ready.address, 15_000); // its lease frees the blocks nobody pulled
    } finally {
      await f.close();
      await stop(lonely);
    }
  });

  test('partition during the KV pull: KVF_ERR_TIMEOUT within the transfer deadline, local prefill, blocks freed on both sides, then recovery', async () => {
    const prompt = PROMPTS[1]!;
    const expected = (await complete(aggregated, prompt)).choices[0]!.text;
    const link = net.hosts[0]!;
    try {
      // Decode workers frozen: the prefill runs and holds the blocks; the link goes before any pull can start.
      await signal(decodes, 'SIGSTOP');
      const pending = complete(frontend, prompt);
      await waitFor(async () => (await health(prefill.ready.address)).heldRequests === 1, 'prefill holding the KV');
      net.cut(link);
      await signal(decodes, 'SIGCONT');
      const body = await pending; // status 200: it finished within the request deadline
      assert.equal(body.kvfabric.mode, 'fallback');
      assert.match(
        body.kvfabric.fallback_reason!,
        new RegExp(`KVF_ERR_TIMEOUT: READ .* at ${link.ip.replace(/\./g, '\\.')}:\\d+ did not complete within ${TRANSFER_MS} ms`),
      );
      assert.equal(body.choices[0]!.text, expected);
    } finally {
      await signal(decodes, 'SIGCONT').catch(() => {});
      net.heal(link);
    }
    await allHealthy(frontend);
    await baseline(); // prefill: its lease expired (or the frontend's Release arrived); decode: freed after the request
    await recovered(prompt, expected);
  });

  test('partition during a decode stream: KVF_ERR_TIMEOUT at the request deadline, blocks freed, then recovery', async () => {
    const prompt = PROMPTS[3]!;
    const expected = (await complete(aggregated, prompt)).choices[0]!.text;
    const client = new OpenAI({ baseURL: `${frontend.url}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
    const cut = decodes.map((_, i) => net.hosts[i + 1]!);
    try {
      await signal(decodes, 'SIGSTOP');
      const started = Date.now();
      const stream = await client.completions.create({
        model: model
          .split('/')
          .pop()!
          .replace(/\.gguf$/, ''),
        prompt,
        max_tokens: 12,
        temperature: 0,
        stream: true,
      });
      const chunks: string[] = [];
      await assert.rejects(
        (async () => {
          for await (const chunk of stream) {
            chunks.push(chunk.choices[0]?.text ?? '');
            // The first token came from the prefill worker; the decode hosts now drop off the network.
            if (chunks.length === 1) {
              for (const h of cut) net.cut(h);
              await signal(decodes, 'SIGCONT');
            }
          }
        })(),
        (err: InstanceType<typeof OpenAI.APIError>) => {
          assert.equal(err.code, 'KVF_ERR_TIMEOUT');
          return true;
        },
      );
      assert.equal(chunks.length, 1);
      assert.ok(Date.now() - started < REQUEST_MS + 10_000, 'ended near the request deadline, not later');
    } finally {
      await signal(decodes, 'SIGCONT').catch(() => {});
      for (const h of cut) net.heal(h);
    }
    await allHealthy(frontend);
    await baseline();
    await recovered(prompt, expected);
  });
});
