import { LEVEL, MESSAGE } from 'triple-beam';
import winston from 'winston';
import { addTraceFields } from './otel';
import { isSecretKey, redact, REDACTED } from './redact';

/** The logger every middleware writes to: a winston logger (or anything with its level methods and `child`). */
export type Logger = winston.Logger;

/** Options of {@link createLogger}. */
export interface LoggerOptions {
  /** Lowest level written, or 'silent'. Defaults to `LOG_LEVEL` or 'info'. */
  level?: string;
  /** 'json' (one JSON object a line) or 'gcp' (adds `severity` for Google Cloud Logging). Defaults to `LOG_FORMAT` or 'json'. */
  format?: 'json' | 'gcp';
  /** Where lines go. Defaults to stdout. */
  stream?: NodeJS.WritableStream;
  /** Fields added to every line (service name, version). Defaults to none. */
  defaultMeta?: Record<string, unknown>;
}

const GCP_SEVERITY: Record<string, string> = {
  error: 'ERROR',
  warn: 'WARNING',
  info: 'INFO',
  http: 'INFO',
  verbose: 'DEBUG',
  debug: 'DEBUG',
  silly: 'DEBUG',
};

/** A winston format that redacts secret fields at any depth (see {@link redact}). */
export const redactFormat = winston.format((info) => redactFields(info as Record<string, unknown>) as typeof info);

/**
 * Redacts `info` in place: winston builds a fresh info object for every call, so its own fields
 * may be replaced; nested objects belong to the caller and are copied where a secret is found.
 */
function redactFields(info: Record<string, unknown>): Record<string, unknown> {
  for (const key of Object.keys(info)) {
    const value = info[key];
    if (value === undefined || value === null) continue;
    if (isSecretKey(key)) info[key] = REDACTED;
    else if (typeof value === 'object') info[key] = redact(value);
  }
  return info;
}

// Errors logged as `{ err }` keep their name, message and stack in the JSON line.
function errorFields(info: Record<string, unknown>): void {
  const err = info.err;
  if (err instanceof Error) info.err = errorObject(err);
  const error = info.error;
  if (error instanceof Error) info.error = errorObject(error);
}

function errorObject(err: Error): Record<string, unknown> {
  return { name: err.name, message: err.message, stack: err.stack, ...(err as unknown as Record<string, unknown>) };
}

// The whole line in one format: timestamp, error fields, redaction, GCP severity and the JSON
// text. One transform instead of a combine() of five keeps the per-line cost of the request log
// (written for every request) low. JSON.stringify is about twice as fast as logform's json()
// (safe-stable-stringify, which sorts keys); lines it cannot encode (cycles, BigInt) fall back to
// json().
const slowJson = winston.format.json();
const lineFormat = winston.format((info, opts) => {
  const record = info as Record<string, unknown>;
  record.timestamp = new Date().toISOString();
  addTraceFields(record);
  errorFields(record);
  redactFields(record);
  if ((opts as { gcp?: boolean }).gcp) record.severity = GCP_SEVERITY[info.level] ?? 'DEFAULT';
  try {
    (info as Record<symbol, unknown>)[MESSAGE] = JSON.stringify(info);
    return info;
  } catch {
    return slowJson.transform(info) as typeof info;
  }
});

/** Builds the default JSON logger: timestamp, level, message and fields on one line, secrets redacted. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? (process.env.LOG_FORMAT === 'gcp' ? 'gcp' : 'json');
  const level = options.level ?? process.env.LOG_LEVEL ?? 'info';
  const transport = options.stream ? new winston.transports.Stream({ stream: options.stream }) : new winston.transports.Console();
  const logger = winston.createLogger({
    // 'silent' turns logging off (tests, benchmarks).
    level: level === 'silent' ? 'error' : level,
    silent: level === 'silent',
    format: lineFormat({ gcp: format === 'gcp' }),
    defaultMeta: options.defaultMeta,
    transports: [transport],
  });
  logger.write = directWrite(logger, transport);
  return logger;
}

type Info = winston.Logform.TransformableInfo & { [key: symbol]: unknown };

/**
 * The logger's own `write`, for the lines of the logger made here: while it still has just the
 * one transport made with it (no transport added, nothing else reading the logger's stream), a
 * line is formatted and handed to that transport's `log()` at once, with winston's level rules.
 * Anything else (another transport, a 'data' listener) takes winston's stream path as before.
 *
 * Why: a winston logger is a Transform stream piped into Writable transports, so each line goes
 * through two streams' bookkeeping and several process.nextTick callbacks; with one line per
 * request that is the largest share of the stack's own cost (figures in docs/benchmarks.md).
 */
function directWrite(logger: winston.Logger, transport: winston.transport): Logger['write'] {
  const streamWrite = logger.write.bind(logger) as Logger['write'];
  const self = logger as winston.Logger & { levels: Record<string, number> };
  return function write(chunk: unknown, encodingOrCallback?: unknown, callback?: unknown): boolean {
    const info = chunk as Info;
    if (
      logger.transports.length !== 1 ||
      logger.transports[0] !== transport ||
      logger.listenerCount('data') > 0 ||
      logger.listenerCount('readable') > 0 ||
      typeof encodingOrCallback === 'function' ||
      typeof callback === 'function' ||
      info === null ||
      typeof info !== 'object'
    ) {
      return (streamWrite as (...args: unknown[]) => boolean)(chunk, encodingOrCallback, callback);
    }
    if (logger.silent) return true;
    if (!info[LEVEL]) info[LEVEL] = info.level;
    const levels = self.levels;
    const lineLevel = levels[info[LEVEL] as string];
    // As winston-transport decides: the transport's level, else the logger's.
    const allowed = levels[transport.level ?? logger.level];
    if (lineLevel === undefined || allowed === undefined || lineLevel > allowed || transport.silent) return true;
    const formatted = logger.format.transform(info, logger.format.options) as Info | false;
    if (!formatted) return true;
    transport.log?.(formatted, noop);
    return true;
  } as Logger['write'];
}

function noop(): void {}

let fallback: Logger | undefined;
/** The process-wide default logger, made on first use (middleware used alone log here). */
export function defaultLogger(): Logger {
  return (fallback ??= createLogger());
}
