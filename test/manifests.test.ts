// The Kubernetes manifests under kubernetes/, checked without a cluster: every YAML document parses and
// validates against the Kubernetes OpenAPI schemas (kubernetes-models), unknown kinds fail, and the
// cross-references a schema cannot see hold — Service selectors reach pods, ConfigMaps exist, ports agree
// with the containers' --listen flags, the ConfigMap holds only variables something reads (and passes
// kvfabric's own config schema and `kvfabric doctor`'s FI_* checks), and the EFA settings of the seed are there.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { describe, test } from 'node:test';

import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service } from 'kubernetes-models/v1/Service';
import { Deployment } from 'kubernetes-models/apps/v1/Deployment';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { parseAllDocuments } from 'yaml';

import { isKnownEnv, MISTAKEN_ENV, runDoctor } from '../src/doctor/index.js';
import { frontendConfig, workerConfig } from '../src/serve/config.js';
import { ROOT } from './helpers/serve.js';

const K8S = join(ROOT, 'kubernetes');

// YAML documents are untyped trees; the schemas above are what types them.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = Record<string, any>;
interface Doc {
  file: string;
  obj: Obj;
}

/** kind → [apiVersion, validating model]. Anything else under kubernetes/ is an error. */
const MODELS: Record<string, [string, new (o: Obj) => { validate(): void }]> = {
  ConfigMap: ['v1', ConfigMap as never],
  Service: ['v1', Service as never],
  Deployment: ['apps/v1', Deployment as never],
  NetworkPolicy: ['networking.k8s.io/v1', NetworkPolicy as never],
};

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? yamlFiles(p) : /\.ya?ml$/.test(n) ? [p] : [];
  });
}

function loadDocs(): Doc[] {
  return yamlFiles(K8S)
    .flatMap((file) =>
      parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
        assert.deepEqual(d.errors, [], `${relative(ROOT, file)}: YAML errors`);
        return { file: relative(K8S, file), obj: d.toJS() as Obj };
      }),
    )
    .filter((d) => d.obj !== null);
}

/** Validates one object with its Kubernetes model; throws on unknown kinds and schema violations. */
function validate({ file, obj }: Doc): void {
  if (obj.kind === 'Kustomization') return; // a kustomize file, not an API object: checked below
  const model = MODELS[obj.kind as string];
  if (!model) throw new Error(`${file}: unknown kind ${String(obj.kind)} (add it to MODELS with its kubernetes-models class)`);
  assert.equal(obj.apiVersion, model[0], `${file}: ${obj.kind} apiVersion`);
  new model[1](obj).validate();
}

const docs = loadDocs();
const ofKind = (kind: string) => docs.filter((d) => d.obj.kind === kind).map((d) => d.obj);
const deployments = ofKind('Deployment');
const byName = (name: string) => deployments.find((d) => d.metadata.name === name)!;
const container = (name: string) => byName(name).spec.template.spec.containers[0] as Obj;
const listenPort = (c: Obj): number | undefined => {
  const args = (c.args ?? []) as string[];
  const i = args.indexOf('--listen');
  return i >= 0 ? Number(args[i + 1]!.split(':').pop()) : undefined;
};
const portOf = (c: Obj, ref: string | number): number | undefined =>
  typeof ref === 'number' ? ref : (c.ports as Obj[] | undefined)?.find((p) => p.name === ref)?.containerPort;

describe('kubernetes manifests', () => {
  test('every YAML document validates against its Kubernetes schema', () => {
    assert.ok(docs.length >= 8, `found ${docs.length} documents`);
    for (const d of docs) validate(d);
    assert.deepEqual([...new Set(docs.map((d) => d.obj.kind))].sort(), ['ConfigMap', 'Deployment', 'Kustomization', 'NetworkPolicy', 'Service']);
  });

  test('the validator is live: unknown kinds and schema violations fail', () => {
    assert.throws(() => validate({ file: 'x.yaml', obj: { apiVersion: 'v1', kind: 'Pod2', metadata: { name: 'x' } } }), /unknown kind Pod2/);
    const broken = structuredClone(byName('kvfabric-decode'));
    broken.spec.template.spec.containers[0].ports[0].containerPort = 'fifty';
    assert.throws(() => validate({ file: 'x.yaml', obj: broken }), /containerPort must be integer/);
    assert.throws(() => validate({ file: 'x.yaml', obj: { apiVersion: 'v1', kind: 'Service', metadata: { name: 's' }, spec: { ports: [{}] } } }), /port/);
  });

  test('kustomization lists every manifest and only existing ones; its image matches the containers', () => {
    const k = ofKind('Kustomization');
    assert.equal(k.length, 1);
    const listed = (k[0]!.resources as string[]).slice().sort();
    const files = docs.map((d) => d.file).filter((f) => !f.endsWith('kustomization.yaml'));
    assert.deepEqual(listed, [...new Set(files)].sort());
    const images = new Set(deployments.flatMap((d) => (d.spec.template.spec.containers as Obj[]).map((c) => String(c.image).replace(/:[^:/]+$/, ''))));
    for (const i of k[0]!.images as Obj[]) assert.ok(images.has(i.name), `kustomize image ${i.name} is used`);
  });

  test('labels: every object carries app.kubernetes.io/*; selectors match their pod templates', () => {
    for (const { file, obj } of docs.filter((d) => d.obj.kind !== 'Kustomization')) {
      for (const key of ['name', 'instance', 'component', 'part-of'])
        assert.ok(obj.metadata.labels?.[`app.kubernetes.io/${key}`], `${file} ${obj.metadata.name}: label app.kubernetes.io/${key}`);
    }
    for (const d of deployments) {
      for (const [k, v] of Object.entries(d.spec.selector.matchLabels as Obj))
        assert.equal(d.spec.template.metadata.labels[k], v, `${d.metadata.name} selector ${k}`);
    }
  });

  test('each Service selects exactly one Deployment and targets a port its container declares', () => {
    for (const svc of ofKind('Service')) {
      const sel = Object.entries(svc.spec.selector as Obj);
      const matches = deployments.filter((d) => sel.every(([k, v]) => d.spec.template.metadata.labels[k] === v));
      assert.equal(matches.length, 1, `Service ${svc.metadata.name} selects ${matches.length} deployments`);
      const c = matches[0]!.spec.template.spec.containers[0] as Obj;
      for (const p of svc.spec.ports as Obj[])
        assert.ok(portOf(c, p.targetPort ?? p.port), `Service ${svc.metadata.name} port ${p.name} reaches a container port`);
    }
    const frontendSvc = ofKind('Service').find((s) => s.metadata.name === 'kvfabric-libfabric')!;
    assert.equal(frontendSvc.spec.ports[0].port, listenPort(container('kvfabric-frontend')), 'test-inference.sh port-forwards svc/kvfabric-libfabric 8000');
  });

  test('configMapRefs exist; ports, probes and KVF_ADVERTISE agree with --listen', () => {
    const maps = new Set(ofKind('ConfigMap').map((m) => m.metadata.name));
    for (const d of deployments) {
      const c = d.spec.template.spec.containers[0] as Obj;
      for (const ref of (c.envFrom ?? []) as Obj[])
        if (ref.configMapRef) assert.ok(maps.has(ref.configMapRef.name), `${d.metadata.name}: ConfigMap ${ref.configMapRef.name} exists`);
      for (const probe of [c.readinessProbe, c.livenessProbe]) {
        const port = probe?.httpGet?.port ?? probe?.tcpSocket?.port ?? probe?.grpc?.port;
        assert.ok(probe && portOf(c, port), `${d.metadata.name}: probes on a declared port`);
      }
      const listen = listenPort(c);
      if (listen === undefined) continue; // etcd
      assert.deepEqual(
        (c.ports as Obj[]).map((p) => p.containerPort),
        [listen],
        `${d.metadata.name}: containerPort = --listen port`,
      );
      const advertise = (c.env as Obj[] | undefined)?.find((e) => e.name === 'KVF_ADVERTISE');
      if (advertise) assert.equal(advertise.value, `$(POD_IP):${listen}`, `${d.metadata.name}: KVF_ADVERTISE`);
    }
  });

  test('frontend: readiness on /health, liveness on /live; workers: EFA, hugepages, /dev/infiniband, IPC_LOCK, pod IP (gRPC and fabric)', () => {
    const f = container('kvfabric-frontend');
    assert.equal(f.readinessProbe.httpGet.path, '/health');
    assert.equal(f.livenessProbe.httpGet.path, '/live');
    for (const name of ['kvfabric-prefill', 'kvfabric-decode']) {
      const pod = byName(name).spec.template.spec as Obj;
      const c = pod.containers[0] as Obj;
      assert.equal(c.args[0], name.replace('kvfabric-', ''));
      for (const r of ['vpc.amazonaws.com/efa', 'hugepages-2Mi']) {
        assert.ok(c.resources.limits[r], `${name} limits ${r}`);
        assert.equal(c.resources.requests[r], c.resources.limits[r], `${name}: ${r} requests = limits`);
      }
      assert.equal(c.resources.limits['hugepages-2Mi'], '5120Mi');
      const ib = (pod.volumes as Obj[]).find((v) => v.hostPath?.path === '/dev/infiniband');
      assert.ok(ib, `${name}: hostPath /dev/infiniband`);
      assert.ok((c.volumeMounts as Obj[]).some((m) => m.name === ib.name && m.mountPath === '/dev/infiniband'));
      const hp = (pod.volumes as Obj[]).find((v) => v.emptyDir?.medium === 'HugePages');
      assert.ok(hp && (c.volumeMounts as Obj[]).some((m) => m.name === hp.name && m.mountPath === '/dev/hugepages'));
      assert.equal(c.securityContext.privileged, true);
      assert.ok(c.securityContext.capabilities.add.includes('IPC_LOCK'));
      const podIp = (c.env as Obj[]).find((e) => e.name === 'POD_IP');
      assert.equal(podIp?.valueFrom.fieldRef.fieldPath, 'status.podIP');
      // On tcp (no EFA) peers dial this for KV; loopback there made every pull time out (issue 19).
      assert.equal((c.env as Obj[]).find((e) => e.name === 'KVF_FABRIC_ADDRESS')?.value, '$(POD_IP)', `${name}: KVF_FABRIC_ADDRESS`);
      assert.ok(c.resources.requests.cpu && c.resources.requests.memory, `${name}: cpu and memory requests`);
    }
  });

  test('ConfigMap: only variables something reads, the seed corrected, values kvfabric accepts', async () => {
    const [cm] = ofKind('ConfigMap');
    const data = cm!.data as Record<string, string>;
    for (const name of Object.keys(data)) assert.ok(isKnownEnv(name), `${name} is read by kvfabric, libfabric, NIXL or rdma-core`);
    for (const name of Object.keys(MISTAKEN_ENV)) assert.equal(data[name], undefined, `${name} is not a real variable`);
    assert.notEqual(data.FI_HMEM_DISABLE_P2P, '1', 'FI_HMEM_DISABLE_P2P=1 disables GPUDirect');
    assert.deepEqual([data.NIXL_BACKEND, data.FI_PROVIDER, data.FI_EFA_USE_DEVICE_RDMA, data.FI_EFA_ENABLE_SHM_TRANSFER], ['LIBFABRIC', 'efa', '1', '0']);
    for (const v of [
      'FI_MR_CACHE_MAX_COUNT',
      'FI_MR_CACHE_MONITOR',
      'FI_EFA_FORK_SAFE',
      'RDMAV_FORK_SAFE',
      'FI_EFA_TX_SIZE',
      'FI_EFA_RX_SIZE',
      'FI_EFA_CQ_SIZE',
      'KVF_LIBFABRIC',
    ])
      assert.ok(data[v], `${v} set`);
    // Every container env too (beyond the downward-API helper POD_IP).
    for (const d of deployments) {
      for (const e of (d.spec.template.spec.containers[0].env ?? []) as Obj[])
        if (e.name !== 'POD_IP') assert.ok(isKnownEnv(e.name), `${d.metadata.name}: ${e.name}`);
    }
    // The same environment as the pods get it, through kvfabric's own config schema.
    const model = '/models/none.gguf';
    const worker = container('kvfabric-decode');
    const workerEnv = {
      ...data,
      ...Object.fromEntries((worker.env as Obj[]).filter((e) => e.value).map((e) => [e.name, String(e.value).replace('$(POD_IP)', '10.0.0.7')])),
    };
    const w = workerConfig({ flags: { role: 'decode', model, listen: `0.0.0.0:${listenPort(worker)}` }, env: workerEnv });
    assert.deepEqual([w.provider, w.etcd, w.advertise, w.hugepages, w.backend], ['efa', ['http://kvfabric-etcd:2379'], '10.0.0.7:50052', true, 'LIBFABRIC']);
    assert.deepEqual(frontendConfig({ flags: { model, listen: '0.0.0.0:8000' }, env: data }).etcd, ['http://kvfabric-etcd:2379']);
    // And through `kvfabric doctor`: its FI_* checks find nothing wrong with these settings.
    const report = await runDoctor({ env: data, root: mkdtempSync(join(tmpdir(), 'kvf-k8s-')), openAgent: false });
    assert.deepEqual(
      report.checks.filter((c) => c.group === 'fi-env' && c.status !== 'ok'),
      [],
    );
  });

  test('security: the frontend holds the token only, workers the token and the handle key; TLS from the mounted Secret; NetworkPolicies admit only the frontend and the peer role', () => {
    const secretEnv = (c: Obj) =>
      Object.fromEntries(
        ((c.env ?? []) as Obj[])
          .filter((e) => e.valueFrom?.secretKeyRef)
          .map((e) => [e.name, `${e.valueFrom.secretKeyRef.name}/${e.valueFrom.secretKeyRef.key}`]),
      );
    assert.deepEqual(secretEnv(container('kvfabric-frontend')), { KVF_CLUSTER_TOKEN: 'kvfabric-cluster/token' });
    for (const name of ['kvfabric-prefill', 'kvfabric-decode']) {
      assert.deepEqual(secretEnv(container(name)), { KVF_CLUSTER_TOKEN: 'kvfabric-cluster/token', KVF_HANDLE_KEY: 'kvfabric-cluster/handle-key' });
    }
    const data = ofKind('ConfigMap')[0]!.data as Record<string, string>;
    assert.equal(data.KVF_TLS_CLIENT_AUTH, 'true');
    for (const name of ['kvfabric-frontend', 'kvfabric-prefill', 'kvfabric-decode']) {
      const pod = byName(name).spec.template.spec as Obj;
      const vol = (pod.volumes as Obj[]).find((v) => v.secret?.secretName === 'kvfabric-tls');
      const mount = (pod.containers[0].volumeMounts as Obj[]).find((m) => m.name === vol?.name);
      for (const key of ['KVF_TLS_CERT', 'KVF_TLS_KEY', 'KVF_TLS_CA'])
        assert.equal(data[key]!.replace(/\/[^/]+$/, ''), mount?.mountPath, `${name}: ${key} under the kvfabric-tls mount`);
    }
    // Policies: one per component; each selects that Deployment's pods; workers' gRPC ports admit the frontend only.
    const policies = ofKind('NetworkPolicy');
    const component = (labels: Obj | undefined) => labels?.['app.kubernetes.io/component'] as string | undefined;
    const selects = (p: Obj) =>
      deployments.filter((d) => Object.entries(p.spec.podSelector.matchLabels as Obj).every(([k, v]) => d.spec.template.metadata.labels[k] === v));
    for (const d of deployments) assert.equal(policies.filter((p) => selects(p).includes(d)).length, 1, `${d.metadata.name}: one NetworkPolicy`);
    for (const [role, peer] of [
      ['prefill', 'decode'],
      ['decode', 'prefill'],
    ] as const) {
      const policy = policies.find((p) => component(p.spec.podSelector.matchLabels) === role)!;
      const port = listenPort(container(`kvfabric-${role}`));
      const rules = policy.spec.ingress as Obj[];
      assert.ok(
        rules.every((r) => Array.isArray(r.from) && r.from.length > 0),
        `${role}: every rule names its sources`,
      );
      const sources = rules.map((r) => [
        (r.from as Obj[]).map((f) => component(f.podSelector?.matchLabels)).join(','),
        ((r.ports ?? []) as Obj[]).map((p) => p.port).join(','),
      ]);
      assert.deepEqual(
        sources,
        [
          ['frontend', String(port)],
          [peer, ''],
        ],
        `${role}: the frontend on gRPC, the peer role on the fabric`,
      );
    }
  });
});
