import { MESSAGE } from 'triple-beam';
import winston from 'winston';
import { redact } from './redact';

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
export const redactFormat = winston.format((info) => {
  for (const key of Object.keys(info)) {
    const value = (info as Record<string, unknown>)[key];
    if (value !== null && typeof value === 'object') (info as Record<string, unknown>)[key] = redact(value);
  }
  return redact(info);
});

// JSON.stringify is about twice as fast as logform's json() (safe-stable-stringify, which sorts
// keys): the request log line is written for every request. Lines it cannot encode (cycles,
// BigInt) fall back to json().
const slowJson = winston.format.json();
const jsonLine = winston.format((info) => {
  try {
    (info as Record<symbol, unknown>)[MESSAGE] = JSON.stringify(info);
    return info;
  } catch {
    return slowJson.transform(info) as typeof info;
  }
});

const gcpFormat = winston.format((info) => {
  (info as Record<string, unknown>).severity = GCP_SEVERITY[info.level] ?? 'DEFAULT';
  return info;
});

// Errors logged as `{ err }` keep their message and stack in the JSON line.
const errorFields = winston.format((info) => {
  const record = info as Record<string, unknown>;
  for (const key of ['err', 'error']) {
    const err = record[key];
    if (err instanceof Error) {
      record[key] = { name: err.name, message: err.message, stack: err.stack, ...(err as unknown as Record<string, unknown>) };
    }
  }
  return info;
});

/** Builds the default JSON logger: timestamp, level, message and fields on one line, secrets redacted. */
export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? (process.env.LOG_FORMAT === 'gcp' ? 'gcp' : 'json');
  const formats = [winston.format.timestamp(), errorFields(), redactFormat()];
  if (format === 'gcp') formats.push(gcpFormat());
  formats.push(jsonLine());
  const level = options.level ?? process.env.LOG_LEVEL ?? 'info';
  return winston.createLogger({
    // 'silent' turns logging off (tests, benchmarks).
    level: level === 'silent' ? 'error' : level,
    silent: level === 'silent',
    format: winston.format.combine(...formats),
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
