// The frontend's span of each completion request: the root of the request's trace (or a child of the client's
// span when it sent a W3C traceparent header), named after the route (`POST /v1/chat/completions`). It opens when
// the request arrives and ends when its response is done or the connection closes, streams included; the
// routes add what the request was and how it went (proof of transport, tokens), the error handler its error.
import type { FastifyInstance, FastifyRequest } from 'fastify';

import { extractHeaders, spanFailed, SpanKind, startSpan, withSpan, type Context, type Span } from '../../common/tracing.js';

export interface RequestTrace {
  span: Span;
  /** The context the request's child spans start under. */
  context: Context;
}

const TRACED = new Set(['/v1/completions', '/v1/chat/completions']);
const traces = new WeakMap<FastifyRequest, RequestTrace>();

/** Opens a SERVER span for every request to a completion route. */
export function traceRequests(app: FastifyInstance): void {
  app.addHook('onRequest', (req, reply, done) => {
    const route = req.routeOptions.url;
    if (route === undefined || !TRACED.has(route)) return done();
    const parent = extractHeaders(req.headers);
    const span = startSpan(`${req.method} ${route}`, parent, SpanKind.SERVER, () => ({
      'http.request.method': req.method,
      'http.route': route,
      'url.path': req.url.split('?', 1)[0]!,
    }));
    traces.set(req, { span, context: withSpan(parent, span) });
    // 'close' comes once the response is sent, or the connection is gone: whichever ends the request.
    reply.raw.once('close', () => {
      if (reply.raw.headersSent) span.setAttribute('http.response.status_code', reply.raw.statusCode);
      span.end();
    });
    done();
  });
}

/** The request's span and context (undefined for a route that is not traced). */
export function requestTrace(req: FastifyRequest): RequestTrace | undefined {
  return traces.get(req);
}

/** Marks the request's span failed with the error its client gets. */
export function requestFailed(req: FastifyRequest, err: unknown): void {
  const t = traces.get(req);
  if (t) spanFailed(t.span, err);
}
