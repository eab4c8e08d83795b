// Closed-loop clients that behave as OpenAI clients under overload: each streams a chat completion, and on 429
// waits the Retry-After delay and sends again. Every request's outcome is classified, so a phase can say how
// many completed (and their tokens: the goodput), how many were refused and how fast, and whether anything
// else happened (5xx, an error event in the stream, a request timeout) — which under admission control must not.
import { percentile, postChat, sseChunks } from './load.js';

export interface Outcome {
  kind: 'completed' | 'refused' | 'server-error' | 'stream-error' | 'client-error';
  status: number;
  /** The kvfabric error code when there was one. */
  code: string | null;
  startedMs: number;
  endedMs: number;
  tokens: number;
  retryAfterS: number | null;
}

export interface PhaseResult {
  concurrency: number;
  seconds: number;
  sent: number;
  completed: number;
  refused: number;
  serverErrors: number;
  streamErrors: number;
  clientErrors: number;
  /** Error codes seen other than the refusals, with counts. */
  errorCodes: Record<string, number>;
  /** Refusals that came without a Retry-After header. */
  refusedWithoutRetryAfter: number;
  refusedP50Ms: number;
  refusedP99Ms: number;
  completedP50Ms: number;
  completedP99Ms: number;
  /** Output tokens of the requests that completed within the phase, per second: the goodput. */
  goodTokensPerS: number;
  completedPerS: number;
}

export interface PhaseOptions {
  url: string;
  modelName: string;
  maxTokens: number;
  concurrency: number;
  durationMs: number;
}

/** One streamed, greedy chat completion; never throws for what the server answers. */
export async function attempt(o: Pick<PhaseOptions, 'url' | 'modelName' | 'maxTokens'>, i: number): Promise<Outcome> {
  const startedMs = performance.now();
  const done = (kind: Outcome['kind'], status: number, code: string | null, tokens = 0, retryAfterS: number | null = null): Outcome => ({
    kind,
    status,
    code,
    startedMs,
    endedMs: performance.now(),
    tokens,
    retryAfterS,
  });
  let res: Response;
  try {
    res = await postChat(o, i);
  } catch (err) {
    return done('client-error', 0, (err as Error).message);
  }
  if (!res.ok || !res.body) {
    const body = (await res.json().catch(() => ({}))) as { error?: { code?: string } };
    const retryAfter = res.headers.get('retry-after');
    const kind = res.status === 429 ? 'refused' : res.status >= 500 ? 'server-error' : 'client-error';
    return done(kind, res.status, body.error?.code ?? null, 0, retryAfter === null ? null : Number(retryAfter));
  }
  let tokens = 0;
  try {
    for await (const chunk of sseChunks(res.body)) {
      if (chunk === 'done') return done('completed', res.status, null, tokens);
      if (chunk.error) return done('stream-error', res.status, chunk.error.code ?? 'unknown');
      if (chunk.usage) tokens = chunk.usage.completion_tokens;
    }
  } catch (err) {
    return done('stream-error', res.status, (err as Error).message);
  }
  return done('stream-error', res.status, 'the stream ended without [DONE]');
}

/** `concurrency` clients for `durationMs`; requests still running at the end are awaited and classified too. */
export async function runPhase(o: PhaseOptions): Promise<{ result: PhaseResult; outcomes: Outcome[] }> {
  const outcomes: Outcome[] = [];
  const start = performance.now();
  const end = start + o.durationMs;
  let n = 0;
  await Promise.all(
    Array.from({ length: o.concurrency }, async () => {
      while (performance.now() < end) {
        const out = await attempt(o, n++);
        outcomes.push(out);
        // As the OpenAI clients do: wait as told, then try again.
        if (out.kind === 'refused') await new Promise((r) => setTimeout(r, Math.min(end - performance.now(), 1000 * (out.retryAfterS ?? 1))));
      }
    }),
  );
  return { result: summarize(o.concurrency, (end - start) / 1000, outcomes, end), outcomes };
}

function summarize(concurrency: number, seconds: number, outcomes: Outcome[], end: number): PhaseResult {
  const of = (kind: Outcome['kind']) => outcomes.filter((x) => x.kind === kind);
  const ms = (xs: Outcome[]) => xs.map((x) => x.endedMs - x.startedMs).sort((a, b) => a - b);
  const completed = of('completed');
  const inWindow = completed.filter((x) => x.endedMs <= end);
  const refused = of('refused');
  const errorCodes: Record<string, number> = {};
  for (const x of outcomes)
    if (x.kind !== 'completed' && x.kind !== 'refused') errorCodes[`${x.status} ${x.code}`] = (errorCodes[`${x.status} ${x.code}`] ?? 0) + 1;
  return {
    concurrency,
    seconds,
    sent: outcomes.length,
    completed: completed.length,
    refused: refused.length,
    serverErrors: of('server-error').length,
    streamErrors: of('stream-error').length,
    clientErrors: of('client-error').length,
    errorCodes,
    refusedWithoutRetryAfter: refused.filter((x) => x.retryAfterS === null).length,
    refusedP50Ms: percentile(ms(refused), 0.5),
    refusedP99Ms: percentile(ms(refused), 0.99),
    completedP50Ms: percentile(ms(completed), 0.5),
    completedP99Ms: percentile(ms(completed), 0.99),
    goodTokensPerS: inWindow.reduce((t, x) => t + x.tokens, 0) / seconds,
    completedPerS: inWindow.length / seconds,
  };
}
