// The engine's own step time beside the serving numbers: the decode workers' step counters (their /health view,
// through the frontend) read before and after a load level, so ITL can be set against the step that bounds it.
import { HEALTH_INTERVAL_MS } from './stack.js';

/** Counts since the workers started, summed over the workers that decode. */
export interface EngineReading {
  steps: number;
  sequences: number;
  tokens: number;
  stepSeconds: number;
  handOffSeconds: number;
  decodeSteps: number;
  decodeStepSeconds: number;
}

/** The engine over one level: means per step (ms), and the batch the steps carried. */
export interface EngineLevel {
  /** Mean compute of the steps that carried only decodes: the engine's decode step. */
  decodeStepMs: number;
  /** Mean compute of all steps (prefill chunks included), and the thread hand-off around each. */
  stepMs: number;
  handOffMs: number;
  steps: number;
  sequencesPerStep: number;
  tokensPerStep: number;
}

interface HealthWorker {
  role: string;
  batch: {
    steps: number;
    step_sequences: number;
    step_tokens: number;
    step_seconds: number;
    hand_off_seconds: number;
    decode_steps: number;
    decode_step_seconds: number;
  } | null;
}

/**
 * The decode workers' counters once the frontend's view of them is fresh: it polls each worker's health every
 * HEALTH_INTERVAL_MS, so a reading taken two intervals after the load stopped includes all of it.
 */
export async function readEngine(url: string): Promise<EngineReading> {
  await new Promise((resolve) => setTimeout(resolve, 2 * HEALTH_INTERVAL_MS + 100));
  const res = await fetch(`${url}/health`);
  const body = (await res.json()) as { workers: HealthWorker[] };
  const r: EngineReading = { steps: 0, sequences: 0, tokens: 0, stepSeconds: 0, handOffSeconds: 0, decodeSteps: 0, decodeStepSeconds: 0 };
  for (const w of body.workers) {
    if (w.role !== 'decode' || !w.batch) continue;
    const b = w.batch;
    r.steps += b.steps;
    r.sequences += b.step_sequences;
    r.tokens += b.step_tokens;
    r.stepSeconds += b.step_seconds;
    r.handOffSeconds += b.hand_off_seconds;
    r.decodeSteps += b.decode_steps;
    r.decodeStepSeconds += b.decode_step_seconds;
  }
  return r;
}

export function engineLevel(before: EngineReading, after: EngineReading): EngineLevel {
  const steps = after.steps - before.steps;
  const decodeSteps = after.decodeSteps - before.decodeSteps;
  return {
    decodeStepMs: ((after.decodeStepSeconds - before.decodeStepSeconds) / decodeSteps) * 1000,
    stepMs: ((after.stepSeconds - before.stepSeconds) / steps) * 1000,
    handOffMs: ((after.handOffSeconds - before.handOffSeconds) / steps) * 1000,
    steps,
    sequencesPerStep: (after.sequences - before.sequences) / steps,
    tokensPerStep: (after.tokens - before.tokens) / steps,
  };
}
