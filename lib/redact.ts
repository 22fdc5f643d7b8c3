/** The value that replaces a secret in logs and audit records. */
export const REDACTED = '[REDACTED]';

// Field names that hold credentials, whatever their case or separator.
const SECRET_KEY = /authorization|cookie|passw(?:or)?d|secret|token|api[-_ ]?key|private[-_]?key|credential|session[-_]?id/i;
const decisions = new Map<string, boolean>();

/** Whether a field name holds a secret (`Authorization`, `set-cookie`, `password`, `apiKey`, `client_secret`…). */
export function isSecretKey(key: string): boolean {
  let hit = decisions.get(key);
  if (hit === undefined) {
    hit = SECRET_KEY.test(key);
    // Field names repeat across requests; the cache stays small for real payloads.
    if (decisions.size < 10_000) decisions.set(key, hit);
  }
  return hit;
}

/**
 * Returns a copy of `value` with every secret field replaced by `[REDACTED]`, at any depth.
 * Objects without secrets come back as they are (no copy), so redacting clean log lines is cheap.
 */
export function redact<T>(value: T, depth = 0, seen?: WeakSet<object>): T {
  if (value === null || typeof value !== 'object') return value;
  if (depth > 20) return '[Truncated]' as unknown as T;
  if (seen !== undefined) {
    if (seen.has(value as object)) return '[Circular]' as unknown as T;
    seen.add(value as object);
  }
  if (value instanceof Error || value instanceof Date || Buffer.isBuffer(value)) return value;
  // The set of objects already walked is made only when there is a nested object to walk into:
  // most values redacted for a log line are flat.
  let visited = seen;
  if (Array.isArray(value)) {
    let copy: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const item: unknown = value[i];
      if (item === null || typeof item !== 'object') continue;
      if (visited === undefined) visited = new WeakSet<object>([value as object]);
      const next = redact(item, depth + 1, visited);
      if (next !== item) (copy ??= value.slice())[i] = next;
    }
    return (copy ?? value) as T;
  }
  let copy: Record<string, unknown> | undefined;
  const source = value as Record<string, unknown>;
  for (const key of Object.keys(source)) {
    const field = source[key];
    if (field === undefined || field === null) continue;
    let next: unknown = field;
    if (isSecretKey(key)) {
      next = REDACTED;
    } else if (typeof field === 'object') {
      if (visited === undefined) visited = new WeakSet<object>([value as object]);
      next = redact(field, depth + 1, visited);
    }
    if (next !== field) (copy ??= { ...source })[key] = next;
  }
  return (copy ?? value) as T;
}
