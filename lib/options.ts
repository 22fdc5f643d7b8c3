import { ConfigError } from './errors';

/**
 * Validates an options object at setup: a plain object (not a request: `app.use(rateLimit)`
 * instead of `app.use(rateLimit())` is a common slip), and no unknown keys (a likely typo,
 * reported with the nearest known key).
 */
export function checkOptions<T extends object>(name: string, options: T | undefined, known: readonly string[]): T {
  if (options === undefined || options === null) return {} as T;
  refuseRequest(name, options);
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(name, `expected an options object, got ${Array.isArray(options) ? 'an array' : typeof options}`);
  }
  const o = options as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      throw new ConfigError(`${name}.${key}`, `unknown option${near ? `; did you mean '${near}'?` : ''} Known options: ${known.join(', ')}`);
    }
  }
  return options;
}

/**
 * Throws when a factory's first argument is a request: the factory itself was mounted
 * (`app.use(rateLimit)`) where the middleware it makes belongs (`app.use(rateLimit())`), so
 * Express calls it with (req, res, next) on every request. `call` is how the fix is written.
 */
export function refuseRequest(name: string, value: unknown, call = `${name}()`): void {
  if (isRequestLike(value)) {
    throw new ConfigError(name, `was called with a request instead of options: write app.use(${call}) with parentheses, not app.use(${name})`);
  }
}

function isRequestLike(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  return 'method' in value && 'headers' in value && ('socket' in value || 'url' in value);
}

/**
 * Refuses an Express Router or app, or a middleware `(req, res, next)`, given for an option that
 * takes a plain callback (`skip`, `key`, `lookup`, …): it would be called with the wrong
 * arguments on every request, and its answer read as the option's. `expected` is the callback's
 * shape for the message, like `(req) => boolean`.
 */
export function checkCallback(option: string, value: unknown, expected: string): void {
  if (typeof value !== 'function') return;
  const fn = value as { length: number; handle?: unknown; use?: unknown; stack?: unknown };
  const fix = `the option is called with ${expected.slice(0, expected.indexOf(')') + 1)} and its return value is used; mount middleware with app.use() instead`;
  if (typeof fn.handle === 'function' && typeof fn.use === 'function') {
    throw new ConfigError(option, `expected a function ${expected}, got an Express ${Array.isArray(fn.stack) ? 'Router' : 'app'}: ${fix}`);
  }
  if (fn.length >= 3) {
    throw new ConfigError(option, `expected a function ${expected}, got a function of ${fn.length} parameters, a middleware (req, res, next): ${fix}`);
  }
}

/** The known key closest to `key` (edit distance at most a third of its length), if any. */
export function nearest(key: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  const k = key.toLowerCase();
  for (const candidate of known) {
    const d = distance(k, candidate.toLowerCase());
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return bestDistance <= Math.max(2, Math.ceil(key.length / 3)) ? best : undefined;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length];
}

/** Throws ConfigError unless `value` is one of `allowed`. */
export function oneOf<T extends string>(option: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T;
  throw new ConfigError(option, `expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${typeof value === 'string' ? `'${value}'` : String(value)}`);
}
