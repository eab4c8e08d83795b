// The HTTP API's request bodies: the real fastify app (buildApp) with the tiny model's tokenizer and chat
// template and no workers, driven with app.inject (no socket). Its JSON schemas (schemas.ts, compiled by
// ajv), content-type parsing and the handlers' preparation (prompt or messages to tokens, limits, sampling)
// all run; a body that passes them reaches the router and gets 503 KVF_ERR_NO_WORKER. Any other 5xx, or an
// error body without a registered code, is a finding.
//   byte0 % 2: 0 POST /v1/completions, 1 POST /v1/chat/completions; the rest is the body.
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import type { FastifyInstance } from 'fastify';
import pino from 'pino';

import { isErrorCode } from '../../src/common/error-registry.js';
import { ChatTemplate } from '../../src/engine/chat-template.js';
import { readGgufMetadata } from '../../src/engine/gguf-metadata.js';
import { Tokenizer } from '../../src/engine/tokenizer.js';
import { buildApp } from '../../src/serve/frontend/app.js';
import { ServeMetrics } from '../../src/serve/metrics.js';
import { Router } from '../../src/serve/router.js';
import { ClusterAuth } from '../../src/serve/security/auth.js';
import { guarded, invariant } from './common.js';

const ROUTES = ['/v1/completions', '/v1/chat/completions'] as const;

let app: Promise<FastifyInstance> | undefined;

async function makeApp(): Promise<FastifyInstance> {
  const model = join(mkdtempSync(join(tmpdir(), 'kvf-fuzz-')), 'tiny-llama.gguf');
  execFileSync(process.execPath, [fileURLToPath(new URL('../../scripts/make-tiny-model.mjs', import.meta.url)), model]);
  const meta = await readGgufMetadata(model);
  const log = pino({ level: 'silent' });
  const router = new Router({
    healthIntervalMs: 60_000,
    keepaliveMs: 10_000,
    auth: ClusterAuth.fromConfig({ clusterToken: 'fuzz-cluster-token-0123456789abcdef' }),
    log,
  });
  return buildApp({
    modelName: 'tiny-llama',
    contextLength: meta.getInt('llama.context_length'),
    tokenizer: Tokenizer.fromGguf(meta),
    template: ChatTemplate.fromGguf(meta),
    flow: { router, mode: 'pull', prefillTimeoutMs: 1000, leaseMs: 1000, maxMigrations: 0, log },
    metrics: new ServeMetrics(router),
    requestTimeoutMs: 1000,
    bodyLimit: 1 << 20,
    bodyTimeoutMs: 1000,
    maxConnections: 64,
    maxInflight: 64,
    log,
  });
}

export async function check(data: Buffer): Promise<void> {
  if (data.length === 0) return;
  app ??= makeApp();
  const url = ROUTES[data[0]! % 2]!;
  const res = await (await app).inject({ method: 'POST', url, headers: { 'content-type': 'application/json' }, payload: data.subarray(1) });
  let code: unknown;
  try {
    code = (JSON.parse(res.body) as { error?: { code?: unknown } }).error?.code;
  } catch {
    code = undefined;
  }
  const accepted = res.statusCode === 503 && code === 'KVF_ERR_NO_WORKER';
  invariant(accepted || (res.statusCode >= 400 && res.statusCode < 500), `${url} answered ${res.statusCode}: ${res.body.slice(0, 500)}`);
  invariant(isErrorCode(code), `${url} answered ${res.statusCode} without a registered error code: ${res.body.slice(0, 500)}`);
}

/** For the replay test: lets its process exit. */
export async function close(): Promise<void> {
  const closing = app;
  app = undefined;
  await (await closing)?.close();
}

export const fuzz = guarded(check);
