import { defaultLogger, type Logger } from './logger';

/**
 * Conditions that are legal but probably wrong. Each is reported once per process through the
 * logger at warn, with a stable code the user can search for, and silenced with
 * `PERIMETER_SILENCE=CODE1,CODE2`. A `{name}` in a message is filled from the line's field of
 * that name.
 */
export const WARNINGS = {
  ERR_TRUST_PROXY_OFF:
    "X-Forwarded-For arrived but Express 'trust proxy' is off, so every client behind the proxy shares the proxy's IP; set app.set('trust proxy', 1) (or the number of proxies) when behind a load balancer",
  ERR_MEMORY_STORE_IN_PRODUCTION:
    'NODE_ENV=production with in-memory stores: rate limits, IP blocks and caches are counted per instance; pass `redis` to createStack() when running several instances',
  ERR_REDIS_UNAVAILABLE: 'Redis is unavailable; stores follow their configured fail mode until it answers again',
  ERR_REDIS_RECOVERED: 'Redis answers again; stores are back on Redis',
  ERR_POSTGRES_UNAVAILABLE: 'PostgreSQL is unavailable; credits and the audit sink follow their configured fail mode until it answers again',
  ERR_POSTGRES_RECOVERED: 'PostgreSQL answers again',
  ERR_POSTGRES_SCHEMA:
    'PostgreSQL schema could not be created; tried again until it is. If the role may not run DDL, run `npx express-perimeter migrate --postgres URL` once with one that may',
  ERR_RATE_LIMIT_STORE_UNAVAILABLE:
    "Rate limiting store failed or answered later than rateLimit.storeTimeout; requests follow rateLimit.onStoreError ('memory': a local limiter at limit / instances; 'open': unlimited; 'closed': 503) until it answers again (logged once per outage)",
  ERR_RATE_LIMIT_STORE_RECOVERED: 'Rate limiting is back on its shared store',
  ERR_CREDITS_DETACHED_METHODS:
    'credits() run-time methods were called on a handler that serves requests behind a stack with its stores, but the methods act on the standalone memory store; call stack.middleware.credits.grant() (same namespace) or pass `stores: stack.stores` to credits()',
  ERR_TIMEOUT_LATE_WRITE: 'A handler tried to write after its request had timed out; the write was dropped',
  ERR_SIZE_LIMIT_LATE_WRITE: 'A handler tried to write after its request was refused as too large (413); the write was dropped',
  ERR_WEAK_JWT_SECRET:
    'auth.jwt.secret is shorter than 32 bytes: an HMAC secret that short can be brute-forced offline from a single token; use 32 or more random bytes (openssl rand -base64 48)',
  ERR_GUARD_WITHOUT_AUTH:
    'requireAuth/requireApiKey/requireRole ran on a request that auth() did not see, so every request is refused as anonymous; mount auth() (or createStack({ auth })) before the guards',
  ERR_AUDIT_WITHOUT_AUDIT_LOG:
    "audit('EVENT') ran on a request no auditLog serves, so nothing is recorded; mount auditLog() (or createStack(), where it is on by default) before the routes",
  ERR_FEATURE_WITHOUT_FLAGS:
    "requireFeature(name) ran on a request no featureFlags served, so every request is refused with 404 FEATURE_DISABLED; mount featureFlags() (or createStack({ featureFlags })) before the route, or give the guard its own flags: requireFeature(name, { flags })",
  ERR_DURATION_UNIT:
    "{option} is {value}, a number of milliseconds, and a {what} that short is almost surely meant in seconds: write {suggestion} (or '{value}ms' to keep milliseconds)",
  ERR_RATE_LIMIT_OUTSIDE_STACK:
    "rateLimit() (limiter '{limiter}') served a request that no stack had seen, so it counts in this instance's memory, although a stack with Redis is open in this process: mount it after app.use(stack), on a path the stack covers, so it counts in Redis for every instance",
} as const;

/** A code of {@link WARNINGS}. */
export type WarningCode = keyof typeof WARNINGS;

const emitted = new Set<string>();

/** Logs `code` once per process (and per `scope`, when given); returns whether it was logged now. */
export function warnOnce(logger: Logger, code: WarningCode, extra?: Record<string, unknown>, scope = ''): boolean {
  const key = code + scope;
  if (emitted.has(key) || isSilenced(code)) return false;
  emitted.add(key);
  const message: string = WARNINGS[code];
  logger.warn(extra === undefined ? message : message.replace(/\{(\w+)\}/g, (slot, name: string) => (name in extra ? String(extra[name]) : slot)), { code, ...extra });
  return true;
}

let stackLogger: Logger | undefined;

/**
 * Runs `build` with setup warnings going to `logger`: createStack builds its middleware inside
 * it, so a factory's setup warnings reach the stack's logger. Synchronous, and restored after.
 */
export function withSetupLogger<T>(logger: Logger, build: () => T): T {
  const previous = stackLogger;
  stackLogger = logger;
  try {
    return build();
  } finally {
    stackLogger = previous;
  }
}

/** Where a factory reports setup warnings: the stack's logger while createStack builds it, else the default logger. */
export function setupLogger(): Logger {
  return stackLogger ?? defaultLogger();
}

/** Forgets which warnings were emitted (tests). */
export function resetWarnings(): void {
  emitted.clear();
}

function isSilenced(code: string): boolean {
  const silenced = process.env.PERIMETER_SILENCE;
  return silenced !== undefined && silenced.split(',').some((c) => c.trim() === code);
}
