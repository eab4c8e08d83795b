// Server-sent events in OpenAI's streaming format: `data: <json>\n\n` per chunk, `data: [DONE]` at the end.
// The response is taken from fastify at the first event (reply.hijack), so until then a failure can still be
// answered as an ordinary HTTP error.
import type { FastifyReply } from 'fastify';

export interface SseStream {
  /** Whether the first event went out (an error must then travel inside the stream). */
  readonly started: boolean;
  /** Whether the client's connection is gone. */
  readonly destroyed: boolean;
  send(data: unknown): void;
  end(): void;
}

export function sseStream(reply: FastifyReply): SseStream {
  const raw = reply.raw;
  return {
    get started() {
      return raw.headersSent;
    },
    get destroyed() {
      return raw.destroyed;
    },
    send(data: unknown): void {
      if (!raw.headersSent) {
        reply.hijack();
        raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' });
      }
      raw.write(`data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    },
    end: () => raw.end(),
  };
}
