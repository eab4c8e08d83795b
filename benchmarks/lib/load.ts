// The benchmarks' HTTP load: streamed chat completions against a kvfabric frontend (or any OpenAI-compatible
// server that adds the `kvfabric` report), timed per request (time to first token, inter-token latency), and
// a closed loop of N concurrent clients over a fixed number of requests.

export const QUESTIONS = [
  'What is the capital of France?',
  'Describe the color of the sky on a clear day.',
  'Name three fruits that are red.',
  'Why do cats purr? Answer briefly.',
  'Write one sentence about the ocean.',
  'What is two plus two?',
  'Give me a short tip for learning to cook, with an example of a simple dish to start with.',
  'Explain in a few words what a computer does.',
];

export interface LoadTarget {
  url: string;
  modelName: string;
  maxTokens: number;
}

export interface Sample {
  ttftMs: number;
  /** Mean gap between tokens after the first. */
  itlMs: number | undefined;
  tokens: number;
  kvBytes: number;
}

export interface LevelResult {
  concurrency: number;
  requests: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  itlP50Ms: number;
  itlP99Ms: number;
  outputTokensPerS: number;
  requestsPerS: number;
  kvBytesPerRequest: number;
}

/** One SSE chunk of a streamed chat completion, as far as the benchmarks read it. */
export interface Chunk {
  error?: { code?: string; message: string };
  choices: { delta?: { content?: string } }[];
  usage?: { completion_tokens: number };
  kvfabric?: { bytes: number };
}

/** Sends a streamed, greedy chat completion of question `i` (mod the list). */
export function postChat(target: LoadTarget, i: number): Promise<Response> {
  return fetch(`${target.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: target.modelName,
      messages: [{ role: 'user', content: QUESTIONS[i % QUESTIONS.length] }],
      max_tokens: target.maxTokens,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    }),
  });
}

/** The chunks of an SSE body in order; 'done' for the closing [DONE]. */
export async function* sseChunks(body: ReadableStream<Uint8Array>): AsyncGenerator<Chunk | 'done'> {
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const bytes of body) {
    buffered += decoder.decode(bytes, { stream: true });
    let end: number;
    while ((end = buffered.indexOf('\n\n')) >= 0) {
      const event = buffered.slice(0, end).replace(/^data: /, '');
      buffered = buffered.slice(end + 2);
      yield event === '[DONE]' ? 'done' : (JSON.parse(event) as Chunk);
    }
  }
}

/** One streamed, greedy chat completion of question `i` (mod the list). */
export async function streamOne(target: LoadTarget, i: number): Promise<Sample> {
  const started = performance.now();
  const res = await postChat(target, i);
  if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  let first: number | undefined;
  let last = started;
  let tokens = 0;
  let kvBytes = 0;
  for await (const chunk of sseChunks(res.body)) {
    if (chunk === 'done') continue;
    if (chunk.error) throw new Error(chunk.error.message);
    if (chunk.choices[0]?.delta?.content) {
      const now = performance.now();
      first ??= now;
      last = now;
    }
    if (chunk.usage) tokens = chunk.usage.completion_tokens;
    if (chunk.kvfabric) kvBytes = chunk.kvfabric.bytes;
  }
  const ttftMs = (first ?? last) - started;
  return { ttftMs, itlMs: tokens > 1 && first !== undefined ? (last - first) / (tokens - 1) : undefined, tokens, kvBytes };
}

/** `concurrency` clients streaming `total` requests between them. */
export async function loadLevel(target: LoadTarget, concurrency: number, total: number): Promise<LevelResult> {
  let next = 0;
  const samples: Sample[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < total) samples.push(await streamOne(target, next++));
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const ttft = samples.map((s) => s.ttftMs).sort((a, b) => a - b);
  const itl = samples.flatMap((s) => (s.itlMs === undefined ? [] : [s.itlMs])).sort((a, b) => a - b);
  const tokens = samples.reduce((n, s) => n + s.tokens, 0);
  return {
    concurrency,
    requests: total,
    ttftP50Ms: percentile(ttft, 0.5),
    ttftP99Ms: percentile(ttft, 0.99),
    itlP50Ms: percentile(itl, 0.5),
    itlP99Ms: percentile(itl, 0.99),
    outputTokensPerS: tokens / seconds,
    requestsPerS: total / seconds,
    kvBytesPerRequest: samples.reduce((n, s) => n + s.kvBytes, 0) / total,
  };
}

export function percentile(sorted: number[], p: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]! : NaN;
}
