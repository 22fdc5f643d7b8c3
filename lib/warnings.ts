import type { Logger } from './logger';

/**
 * Conditions that are legal but probably wrong. Each is reported once per process through the
 * logger at warn, with a stable code the user can search for, and silenced with
 * `PERIMETER_SILENCE=CODE1,CODE2`.
 */
export const WARNINGS = {
  ERR_TRUST_PROXY_OFF:
    "X-Forwarded-For arrived but Express 'trust proxy' is off, so every client behind the proxy shares the proxy's IP; set app.set('trust proxy', 1) (or the number of proxies) when behind a load balancer",
  ERR_MEMORY_STORE_IN_PRODUCTION:
    'NODE_ENV=production with in-memory stores: rate limits, IP blocks and caches are counted per instance; pass `redis` to createStack() when running several instances',
  ERR_REDIS_UNAVAILABLE: 'Redis is unavailable; stores follow their configured fail mode until it answers again',
  ERR_REDIS_RECOVERED: 'Redis answers again; stores are back on Redis',
  ERR_TIMEOUT_LATE_WRITE: 'A handler tried to write after its request had timed out; the write was dropped',
} as const;

/** A code of {@link WARNINGS}. */
export type WarningCode = keyof typeof WARNINGS;

const emitted = new Set<string>();

/** Logs `code` once per process (and per `scope`, when given); returns whether it was logged now. */
export function warnOnce(logger: Logger, code: WarningCode, extra?: Record<string, unknown>, scope = ''): boolean {
  const key = code + scope;
  if (emitted.has(key) || isSilenced(code)) return false;
  emitted.add(key);
  logger.warn(WARNINGS[code], { code, ...extra });
  return true;
}

/** Forgets which warnings were emitted (tests). */
export function resetWarnings(): void {
  emitted.clear();
}

function isSilenced(code: string): boolean {
  const silenced = process.env.PERIMETER_SILENCE;
  return silenced !== undefined && silenced.split(',').some((c) => c.trim() === code);
}
