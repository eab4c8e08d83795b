import { pino, type Logger } from 'pino';

let shared: Logger | undefined;

/** The library's default logger: JSON to stderr (stdout stays the application's), level from KVF_LOG_LEVEL. */
export function defaultLogger(): Logger {
  shared ??= pino({ name: 'kvfabric', level: process.env.KVF_LOG_LEVEL ?? 'info' }, pino.destination(2));
  return shared;
}

export type { Logger };
