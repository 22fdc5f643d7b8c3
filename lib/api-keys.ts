import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { ConfigError } from './errors';
import { describe } from './units';
import { nearest } from './options';
import type { ApiKeyInfo } from '../types/express-augment';

/** One API key of the `auth.apiKeys` table: the key itself or its SHA-256 `hash`, and what it grants. */
export interface ApiKeyEntry {
  /** The key as clients send it. Give this or `hash`. */
  key?: string;
  /** SHA-256 hex digest of the key, so the config holds no secret. Give this or `key`. */
  hash?: string;
  /** Label for logs and `req.apiKey.name`. Defaults to none. */
  name?: string;
  /** Rate-limit tier (`req.auth.tier`). Defaults to none. */
  tier?: string;
  /** The user the key acts for: becomes `req.user.id`. Defaults to none. */
  userId?: string;
  /** When the key stops working: ISO string, Date or epoch milliseconds. Defaults to never. */
  expiresAt?: string | Date | number;
  /** `false` refuses the key (revoked, suspended). Defaults to true. */
  active?: boolean;
}

/** What `auth.lookup(key)` returns for a known key (`null` for an unknown one). */
export type ApiKeyLookupResult = Omit<ApiKeyEntry, 'key' | 'hash'>;

/** Finds a key outside the config (database, secrets service). Called with the presented key and its SHA-256 hex digest. */
export type ApiKeyLookup = (
  key: string,
  sha256: string,
) => Promise<ApiKeyLookupResult | null | undefined> | ApiKeyLookupResult | null | undefined;

/** A key as checked per request: what `req.apiKey` shows (frozen, no secret), plus its validity. */
export interface ApiKeyRecord {
  info: Readonly<ApiKeyInfo>;
  /** Epoch milliseconds, or undefined for never. */
  expiresAt?: number;
  active: boolean;
}

const ENTRY_KEYS = ['key', 'hash', 'name', 'tier', 'userId', 'expiresAt', 'active'] as const;
const SHA256_HEX = /^[0-9a-f]{64}$/i;

/** SHA-256 of `value` as lowercase hex: the form keys are stored and compared in. */
export function sha256Hex(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

/**
 * Builds the key table: SHA-256 hex of each key → its record.
 *
 * Why a Map of hashes is a constant-time compare: a presented key is hashed first and only its
 * digest meets the table. The time a Map lookup takes depends on the digest, which an attacker
 * cannot steer towards a stored digest without a SHA-256 preimage, so response timing reveals
 * nothing about how many leading characters of a real key were right (the leak a `===` on the raw
 * strings has). The raw keys are dropped after hashing, so the table holds no secret either.
 */
export function buildKeyTable(entries: unknown, option: string): Map<string, ApiKeyRecord> {
  const table = new Map<string, ApiKeyRecord>();
  if (entries === undefined) return table;
  if (!Array.isArray(entries)) {
    throw new ConfigError(option, `expected an array like [{ key: 'sk-…', name: 'Production', tier: 'pro' }], got ${describe(entries)}`);
  }
  entries.forEach((entry, i) => {
    const at = `${option}[${i}]`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
      throw new ConfigError(at, `expected { key | hash, name, tier, userId, expiresAt, active }, got ${describe(entry)}`);
    }
    for (const k of Object.keys(entry)) {
      if (!(ENTRY_KEYS as readonly string[]).includes(k)) {
        const near = nearest(k, ENTRY_KEYS);
        throw new ConfigError(
          `${at}.${k}`,
          `unknown field${near ? `; did you mean '${near}'?` : ''} Known fields: ${ENTRY_KEYS.join(', ')}`,
        );
      }
    }
    const e = entry as ApiKeyEntry;
    if ((e.key === undefined) === (e.hash === undefined)) {
      throw new ConfigError(at, "give exactly one of 'key' (the key itself) or 'hash' (its SHA-256 hex digest)");
    }
    let hash: string;
    if (e.key !== undefined) {
      if (typeof e.key !== 'string' || e.key.length === 0)
        throw new ConfigError(`${at}.key`, `expected a non-empty string, got ${describe(e.key)}`);
      hash = sha256Hex(e.key);
    } else {
      if (typeof e.hash !== 'string' || !SHA256_HEX.test(e.hash)) {
        throw new ConfigError(
          `${at}.hash`,
          "expected the SHA-256 hex digest of the key (64 hex characters), e.g. from `node -e \"console.log(require('crypto').createHash('sha256').update(process.argv[1]).digest('hex'))\" sk-…`",
        );
      }
      hash = e.hash.toLowerCase();
    }
    if (table.has(hash)) throw new ConfigError(at, 'the same key appears twice in the table; remove one entry');
    table.set(hash, toRecord(e, at));
  });
  return table;
}

/** Validates and freezes one entry (from the config or a lookup); throws ConfigError naming `at`. */
export function toRecord(entry: ApiKeyLookupResult, at: string): ApiKeyRecord {
  const info: ApiKeyInfo = {};
  for (const field of ['name', 'tier', 'userId'] as const) {
    const value = entry[field];
    if (value === undefined || value === null) continue;
    if (typeof value !== 'string' && typeof value !== 'number')
      throw new ConfigError(`${at}.${field}`, `expected a string, got ${describe(value)}`);
    info[field] = String(value);
  }
  if (entry.active !== undefined && typeof entry.active !== 'boolean') {
    throw new ConfigError(`${at}.active`, `expected true or false, got ${describe(entry.active)}`);
  }
  const record: ApiKeyRecord = { info: Object.freeze(info), active: entry.active !== false };
  if (entry.expiresAt !== undefined && entry.expiresAt !== null) record.expiresAt = parseInstant(entry.expiresAt, `${at}.expiresAt`);
  return record;
}

function parseInstant(value: unknown, option: string): number {
  const ms =
    value instanceof Date ? value.getTime() : typeof value === 'number' ? value : typeof value === 'string' ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) {
    throw new ConfigError(
      option,
      `expected an ISO date string ('2026-01-31T00:00:00Z'), a Date or epoch milliseconds, got ${describe(value)}`,
    );
  }
  return ms;
}

/** Options of {@link CachedLoader}. */
export interface CachedLoaderOptions {
  /** How long a found value is reused, in ms (0: not cached). */
  ttlMs: number;
  /** How long a "not found" is reused, in ms (0: not cached). */
  negativeTtlMs: number;
  /** Most found values kept. */
  max: number;
  /** Current time in epoch ms. */
  clock: () => number;
}

/**
 * A bounded cache in front of a slow async source (`lookup`, `loadUser`): hits are answered
 * synchronously, concurrent misses for one key share one call, failures are not cached.
 * "Not found" answers live in their own smaller LRU, so a flood of random keys cannot evict the
 * valid ones.
 */
export class CachedLoader<V> {
  private readonly found: LRUCache<string, { value: V; expiresAt: number }>;
  private readonly missing: LRUCache<string, number>;
  private readonly inflight = new Map<string, Promise<V | null>>();
  private readonly options: CachedLoaderOptions;

  constructor(options: CachedLoaderOptions) {
    this.options = options;
    this.found = new LRUCache({ max: Math.max(1, options.max) });
    this.missing = new LRUCache({ max: Math.max(1, Math.ceil(options.max / 10)) });
  }

  /** The cached answer: a value, `null` (known missing), or `undefined` when not cached. */
  peek(cacheKey: string): V | null | undefined {
    const now = this.options.clock();
    const hit = this.found.get(cacheKey);
    if (hit !== undefined) {
      if (hit.expiresAt > now) return hit.value;
      this.found.delete(cacheKey);
    }
    const missUntil = this.missing.get(cacheKey);
    if (missUntil !== undefined) {
      if (missUntil > now) return null;
      this.missing.delete(cacheKey);
    }
    return undefined;
  }

  /** Calls `load` (once for concurrent callers of the same key) and caches its answer. */
  load(cacheKey: string, load: () => Promise<V | null | undefined> | V | null | undefined): Promise<V | null> {
    let pending = this.inflight.get(cacheKey);
    if (pending !== undefined) return pending;
    // The executor turns a synchronous throw of `load` into a rejection, like an async one.
    pending = new Promise<V | null | undefined>((resolve) => resolve(load())).then((loaded) => {
      const value = loaded ?? null;
      const now = this.options.clock();
      if (value === null) {
        if (this.options.negativeTtlMs > 0) this.missing.set(cacheKey, now + this.options.negativeTtlMs);
      } else if (this.options.ttlMs > 0) {
        this.found.set(cacheKey, { value, expiresAt: now + this.options.ttlMs });
      }
      return value;
    });
    const settled = (): void => {
      this.inflight.delete(cacheKey);
    };
    pending.then(settled, settled);
    this.inflight.set(cacheKey, pending);
    return pending;
  }

  /** Drops one key (or everything) from the cache. */
  clear(cacheKey?: string): void {
    if (cacheKey === undefined) {
      this.found.clear();
      this.missing.clear();
    } else {
      this.found.delete(cacheKey);
      this.missing.delete(cacheKey);
    }
  }
}
