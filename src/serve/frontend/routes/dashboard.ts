// The dashboard: a static page (web/dashboard/, shipped in the package, no build step) at GET /, a JSON snapshot
// of what it shows at GET /dashboard/state, and the same snapshot once a second plus an event per finished
// request as server-sent events at GET /dashboard/events. Like /health and /metrics these routes are open: the
// HTTP API has no authentication of its own, and they show nothing that /health and the responses' kvfabric
// reports do not (no worker addresses).
import { readFile } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';

import type { FastifyInstance } from 'fastify';

import { KvfError } from '../../../common/errors.js';
import type { FinishedRequest } from '../recent.js';
import type { RouteContext } from './context.js';
import { workerViews } from './status.js';

// Three levels up from both src/serve/frontend/routes (tsx) and dist/serve/frontend/routes (built): the package root.
const WEB = new URL('../../../../web/dashboard/', import.meta.url);

/** URL → file in web/dashboard/ and its type. Nothing else is served from there (no path ever comes from the request). */
const FILES: Record<string, [file: string, type: string]> = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/dashboard/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/dashboard/app.css': ['app.css', 'text/css; charset=utf-8'],
};

// The page loads its script and style from here and talks to this origin alone; inline script is never allowed,
// so text that reaches the page (model output, error messages) cannot become code even if it slipped into markup.
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** How often the feed sends a snapshot. */
const SNAPSHOT_MS = 1000;
/** A feed whose client reads slower than this much is buffered for it is ended (its page reconnects). */
const MAX_BUFFERED = 1 << 20;

export function dashboardRoutes(app: FastifyInstance, { options, admission, recent }: RouteContext): void {
  for (const [url, [file, type]] of Object.entries(FILES)) {
    app.get(url, async (_req, reply) => {
      const path = new URL(file, WEB);
      let body: Buffer;
      try {
        body = await readFile(path);
      } catch (err) {
        throw new KvfError('KVF_ERR_BAD_CONFIG', `the dashboard's ${file} cannot be read (${(err as Error).message}): the package's web/ folder is missing`);
      }
      void reply.header('content-type', type).header('cache-control', 'no-cache').header('x-content-type-options', 'nosniff');
      if (file.endsWith('.html')) void reply.header('content-security-policy', CSP);
      return body;
    });
  }

  // Open feeds, each with the function that ends it: so that closing the server can end them.
  const feeds = new Set<() => void>();
  const snapshot = () => ({
    time: Date.now(),
    model: options.modelName,
    model_warning: options.modelWarning ?? null,
    mode: options.flow.mode,
    inflight: admission.inflight,
    max_inflight: admission.max,
    workers: workerViews(options.flow.router),
    stats: recent.stats(),
    recent: recent.last(),
    /** Dashboards following the feed now. */
    feeds: feeds.size,
  });
  app.get('/dashboard/state', () => snapshot());

  app.get('/dashboard/events', (_req, reply) => {
    reply.hijack();
    const raw: ServerResponse = reply.raw;
    // connection: close, so that a feed ended by the server takes its socket along and does not hold server.close().
    raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'close' });
    const send = (event: string, data: unknown): void => {
      if (raw.destroyed || raw.writableEnded) return;
      if (raw.writableLength > MAX_BUFFERED) {
        options.log.debug({ buffered: raw.writableLength }, 'dashboard feed ended: its client does not keep up');
        stop();
        return;
      }
      raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const timer = setInterval(() => send('snapshot', snapshot()), SNAPSHOT_MS);
    const unsubscribe = recent.subscribe((r: FinishedRequest) => send('request', r));
    function stop(): void {
      clearInterval(timer);
      unsubscribe();
      feeds.delete(stop);
      // A client that keeps up (nothing buffered for it) gets a proper end; one that does not is cut off, since an
      // end would wait for it to read what is buffered first, and would hold server.close() as long.
      if (raw.writableLength > 0) raw.destroy();
      else if (!raw.writableEnded) raw.end();
    }
    feeds.add(stop);
    raw.once('close', stop);
    // How long the page waits before it reconnects after the feed ends.
    raw.write('retry: 2000\n\n');
    send('snapshot', snapshot());
  });
  // preClose, not onClose: fastify's close waits for open connections before its onClose hooks run, and a feed
  // never ends by itself, so ending the feeds must come first or the server would never finish closing.
  app.addHook('preClose', (done) => {
    for (const stop of [...feeds]) stop();
    done();
  });
}
