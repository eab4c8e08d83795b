// The one path every HTTP error takes: an OpenAI-style error object whose `code` is a stable kvfabric code and
// whose HTTP status follows from it (the registry, src/common/error-registry.ts) — thrown by a route, refused by
// JSON-schema validation, an unknown route, or sent inside an SSE stream whose headers are gone already.
import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply } from 'fastify';

import { KvfError } from '../../common/errors.js';
import { ERROR_REGISTRY, isErrorCode } from '../../common/error-registry.js';
import { requestFailed } from './request-trace.js';

/** The code's HTTP status from the registry; 500 for anything that is not a registered code. */
function httpStatus(code: string): number {
  return isErrorCode(code) ? ERROR_REGISTRY[code].http : 500;
}

/** Routes throw; this turns whatever they throw (and schema refusals, and unknown routes) into error responses. */
export function installErrorHandlers(app: FastifyInstance, log: FastifyBaseLogger): void {
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err.validation) {
      const v = err.validation[0];
      const params = (v?.params ?? {}) as { additionalProperty?: string; missingProperty?: string };
      const path = v?.instancePath.replace(/^\//, '').replace(/\//g, '.') ?? '';
      if (params.additionalProperty) {
        const name = path ? `${path}.${params.additionalProperty}` : params.additionalProperty;
        return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `unknown or unsupported field '${name}'`), name);
      }
      const param = params.missingProperty ? (path ? `${path}.${params.missingProperty}` : params.missingProperty) : path || null;
      return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `invalid request body: ${err.message}`), param);
    }
    if (err instanceof KvfError) return sendError(reply, err);
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      return sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', err.message), null, err.statusCode);
    }
    log.error({ err }, 'unhandled error');
    return sendError(reply, err);
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, new KvfError('KVF_ERR_BAD_REQUEST', `no route ${req.method} ${req.url}`), null, 404));
}

/** Any error as a KvfError: what is not one already is a worker's failure as far as the client can tell. */
export function asKvf(err: unknown): KvfError {
  return err instanceof KvfError ? err : new KvfError('KVF_ERR_WORKER_FAILED', (err as Error).message, { cause: err });
}

export function errorObject(err: KvfError, param: string | null) {
  const status = httpStatus(err.code);
  const type =
    status === 400 || status === 404 ? 'invalid_request_error' : status === 429 ? 'rate_limit_error' : status === 503 ? 'service_unavailable' : 'server_error';
  return { message: err.message, type, param, code: err.code };
}

function sendError(reply: FastifyReply, err: Error, param: string | null = null, status?: number): FastifyReply {
  const e = asKvf(err);
  requestFailed(reply.request, e);
  if (e.code === 'KVF_ERR_OVERLOADED') void reply.header('retry-after', '1');
  return reply.code(status ?? httpStatus(e.code)).send({ error: errorObject(e, param) });
}
