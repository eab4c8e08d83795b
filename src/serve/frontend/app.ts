// The OpenAI-compatible HTTP API (fastify): completions and chat completions, streaming (SSE in OpenAI's
// chunk format) and not, models, health, liveness, Prometheus metrics, and the dashboard page with its feed.
// Requests are validated by JSON schema; every error is an OpenAI-style error object whose `code` is a stable
// kvfabric code (errors.ts).
// The routes live in routes/, one module per purpose; this file builds the server they share.
import { createServer } from 'node:http';

import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';

import type { Logger } from '../../common/logger.js';
import type { ChatTemplate } from '../../engine/chat-template.js';
import type { Tokenizer } from '../../engine/tokenizer.js';
import type { FlowContext } from '../flow.js';
import type { ServeMetrics } from '../metrics.js';
import { Admission } from './admission.js';
import { installErrorHandlers } from './errors.js';
import { RecentRequests } from './recent.js';
import { traceRequests } from './request-trace.js';
import { completionRoutes } from './routes/completions.js';
import type { RouteContext } from './routes/context.js';
import { dashboardRoutes } from './routes/dashboard.js';
import { modelRoutes } from './routes/models.js';
import { statusRoutes } from './routes/status.js';

export interface AppOptions {
  modelName: string;
  /** Said in /v1/models beside the model (the tiny test model's). */
  modelWarning?: string;
  contextLength: number;
  tokenizer: Tokenizer;
  template: ChatTemplate | undefined;
  flow: FlowContext;
  metrics: ServeMetrics;
  requestTimeoutMs: number;
  bodyLimit: number;
  bodyTimeoutMs: number;
  maxConnections: number;
  maxInflight: number;
  log: Logger;
}

export function buildApp(options: AppOptions): FastifyInstance {
  const { metrics, log } = options;
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // One 'request served' line with the transport proof per request instead of fastify's two per request.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: options.bodyLimit,
    // Node checks request deadlines every connectionsCheckingInterval (30 s by default): too coarse for a body
    // timeout of seconds, so the server is made here with a check interval to match.
    serverFactory: (handler) =>
      createServer(
        {
          requestTimeout: options.bodyTimeoutMs,
          headersTimeout: Math.min(60_000, options.bodyTimeoutMs),
          connectionsCheckingInterval: Math.min(1000, options.bodyTimeoutMs),
        },
        handler,
      ),
    // Refuse, do not strip or coerce: a field the API does not know must not be silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } },
  });
  app.server.maxConnections = options.maxConnections;
  installErrorHandlers(app, log as FastifyBaseLogger);
  traceRequests(app);
  app.addHook('onResponse', (req, reply, done) => {
    metrics.requests.inc({ route: req.routeOptions.url ?? 'unknown', status: String(reply.statusCode) });
    done();
  });
  const ctx: RouteContext = { options, admission: new Admission(options.maxInflight), recent: new RecentRequests() };
  statusRoutes(app, ctx);
  modelRoutes(app, ctx);
  completionRoutes(app, ctx);
  dashboardRoutes(app, ctx);
  return app;
}
