// How long /live takes to answer while the frontend handles a 4 MB prompt (the liveness probe's timeout is 1 s).
// Start a frontend first, e.g.:
//   KVF_CLUSTER_TOKEN=0123456789abcdef0123 node dist/cli/main.js frontend --listen 127.0.0.1:8123 --decode 127.0.0.1:9
//   node benchmarks/live-during-huge-prompt.mjs http://127.0.0.1:8123
const url = process.argv[2] ?? 'http://127.0.0.1:8123';
const models = await (await fetch(`${url}/v1/models`)).json();
const body = JSON.stringify({ model: models.data[0].id, prompt: 'a'.repeat(4_000_000), max_tokens: 1 });
const post = fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.status);
await new Promise((r) => setTimeout(r, 50));
const ms = [];
for (let i = 0; i < 20; i++) {
  const t = performance.now();
  await fetch(`${url}/live`);
  ms.push(performance.now() - t);
  await new Promise((r) => setTimeout(r, 25));
}
ms.sort((a, b) => a - b);
console.log(`POST status ${await post}; /live over 20 probes: max ${ms.at(-1).toFixed(1)} ms, p50 ${ms[10].toFixed(1)} ms`);
