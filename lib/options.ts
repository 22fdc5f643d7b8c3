import { ConfigError, } from './errors';

/**
 * Validates an options object at setup: a plain object (not a request: `app.use(rateLimit)`
 * instead of `app.use(rateLimit())` is a common slip), and no unknown keys (a likely typo,
 * reported with the nearest known key).
 */
export function checkOptions<T extends object>(name: string, options: T | undefined, known: readonly string[]): T {
  if (options === undefined || options === null) return {} as T;
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(name, `expected an options object, got ${Array.isArray(options) ? 'an array' : typeof options}`);
  }
  const o = options as Record<string, unknown>;
  if ('method' in o && 'headers' in o && ('socket' in o || 'url' in o)) {
    throw new ConfigError(name, `was called with a request instead of options: write app.use(${name}()) with parentheses, not app.use(${name})`);
  }
  for (const key of Object.keys(o)) {
    if (!known.includes(key)) {
      const near = nearest(key, known);
      throw new ConfigError(`${name}.${key}`, `unknown option${near ? `; did you mean '${near}'?` : ''} Known options: ${known.join(', ')}`);
    }
  }
  return options;
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
