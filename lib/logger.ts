import { MESSAGE } from 'triple-beam';
import winston from 'winston';
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
  return winston.createLogger({
    // 'silent' turns logging off (tests, benchmarks).
    level: level === 'silent' ? 'error' : level,
    silent: level === 'silent',
    format: lineFormat({ gcp: format === 'gcp' }),
    defaultMeta: options.defaultMeta,
    transports: [
      options.stream
        ? new winston.transports.Stream({ stream: options.stream })
        : new winston.transports.Console(),
    ],
  });
}

let fallback: Logger | undefined;
/** The process-wide default logger, made on first use (middleware used alone log here). */
export function defaultLogger(): Logger {
  return (fallback ??= createLogger());
}
