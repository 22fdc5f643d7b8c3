import type { Request } from 'express';
import type { IdempotencyOptions } from '../../middleware/idempotency';
import { ConfigError } from '../errors';
import { checkOptions, oneOf } from '../options';
import type { RedisOption } from '../stores/redis-connection';
import type { Stores } from '../stores/types';
import { describe, parseBytes, parseDuration } from '../units';
import { scopeOf } from './key';

/** Everything one `idempotency()` decided at setup. Durations in ms. */
export interface IdempotencyConfig {
  /** The header's name, lower case (as Node keys `req.headers`). */
  header: string;
  /** The header's name as configured, for messages. */
  headerName: string;
  methods: Set<string>;
  required: boolean;
  ttlMs: number;
  lockTtlMs: number;
  retryAfterSeconds: number;
  maxBodySize: number;
  scope: (req: Request) => string;
  fingerprint: ((req: Request) => unknown) | undefined;
  releaseStatuses: Set<number>;
  releaseOnDisconnect: boolean;
  keepLockOnTimeout: boolean;
  onStoreError: 'open' | 'closed';
  storeTimeout: number;
  namespace: string;
  maxEntries: number;
  maxBytes: number;
  stores: Stores | undefined;
  redis: RedisOption | undefined;
}

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const METHOD = /^[A-Z]+$/;
const NAMESPACE = /^[A-Za-z0-9._:-]{1,64}$/;
const MS_PER_SECOND = 1000;

/** The lock of a request when neither `lockTtl` nor a stack's timeout says otherwise. */
export const DEFAULT_LOCK_TTL_MS = 60_000;

// One row per option: its default and its check, in one place. `satisfies` keeps the rows and
// IdempotencyOptions in step (a missing or unknown row fails to compile); the known keys come from here.
const OPTIONS = {
  header: (v: unknown) => headerName(v ?? 'Idempotency-Key'),
  methods: (v: unknown) => methodList(v ?? ['POST', 'PATCH']),
  required: (v: unknown) => flag(v ?? false, 'idempotency.required'),
  ttl: (v: unknown) => positiveDuration(v ?? '24h', 'idempotency.ttl'),
  lockTtl: (v: unknown) => positiveDuration(v ?? DEFAULT_LOCK_TTL_MS, 'idempotency.lockTtl'),
  retryAfter: (v: unknown) => Math.max(1, Math.ceil(positiveDuration(v ?? '1s', 'idempotency.retryAfter') / MS_PER_SECOND)),
  maxBodySize: (v: unknown) => parseBytes(v ?? '1mb', 'idempotency.maxBodySize'),
  scope: (v: unknown) => scopeOf(v as Parameters<typeof scopeOf>[0]),
  fingerprint: (v: unknown) => optionalFunction<(req: Request) => unknown>(v, 'idempotency.fingerprint'),
  releaseStatuses: (v: unknown) => statusList(v ?? [401, 402, 408, 413, 425, 429, 499]),
  releaseOnDisconnect: (v: unknown) => flag(v ?? true, 'idempotency.releaseOnDisconnect'),
  keepLockOnTimeout: (v: unknown) => flag(v ?? false, 'idempotency.keepLockOnTimeout'),
  onStoreError: (v: unknown) => oneOf('idempotency.onStoreError', v ?? 'open', ['open', 'closed'] as const),
  storeTimeout: (v: unknown) => positiveDuration(v ?? '100ms', 'idempotency.storeTimeout'),
  namespace: (v: unknown) => namespaceName(v ?? 'idempotency'),
  maxEntries: (v: unknown) => wholeCount(v ?? 10_000, 'idempotency.maxEntries'),
  maxBytes: (v: unknown) => parseBytes(v ?? '64mb', 'idempotency.maxBytes'),
  stores: (v: unknown) => storesObject(v),
  redis: (v: unknown) => v as RedisOption | undefined,
} satisfies { [K in keyof Required<IdempotencyOptions>]: (value: unknown) => unknown };

type Parsed = { [K in keyof typeof OPTIONS]: ReturnType<(typeof OPTIONS)[K]> };

const KNOWN = Object.keys(OPTIONS) as Array<keyof typeof OPTIONS>;

/** Checks every option of `idempotency()` once and turns it into the settings the middleware runs on. */
export function parseIdempotencyOptions(options: IdempotencyOptions): IdempotencyConfig {
  checkOptions('idempotency', options, KNOWN);
  const given = options as Record<string, unknown>;
  const o = {} as Record<string, unknown>;
  for (const name of KNOWN) o[name] = OPTIONS[name](given[name]);
  const p = o as Parsed;
  if (p.stores !== undefined && p.redis !== undefined) {
    throw new ConfigError('idempotency.redis', 'give either stores or redis, not both: stores already says where the records live');
  }
  if (p.maxBodySize > p.maxBytes) {
    throw new ConfigError('idempotency.maxBodySize', `${p.maxBodySize} bytes is more than maxBytes (${p.maxBytes}), the most the memory store holds in all; raise maxBytes or lower maxBodySize`);
  }
  return {
    header: p.header.toLowerCase(),
    headerName: p.header,
    methods: p.methods,
    required: p.required,
    ttlMs: p.ttl,
    lockTtlMs: p.lockTtl,
    retryAfterSeconds: p.retryAfter,
    maxBodySize: p.maxBodySize,
    scope: p.scope,
    fingerprint: p.fingerprint,
    releaseStatuses: p.releaseStatuses,
    releaseOnDisconnect: p.releaseOnDisconnect,
    keepLockOnTimeout: p.keepLockOnTimeout,
    onStoreError: p.onStoreError,
    storeTimeout: p.storeTimeout,
    namespace: p.namespace,
    maxEntries: p.maxEntries,
    maxBytes: p.maxBytes,
    stores: p.stores,
    redis: p.redis,
  };
}

function headerName(value: unknown): string {
  if (typeof value !== 'string' || !HEADER_NAME.test(value)) {
    throw new ConfigError('idempotency.header', `expected a header name like 'Idempotency-Key', got ${describe(value)}`);
  }
  return value;
}

function methodList(value: unknown): Set<string> {
  if (!Array.isArray(value) || value.length === 0 || value.some((m) => typeof m !== 'string' || !METHOD.test(m.toUpperCase()))) {
    throw new ConfigError('idempotency.methods', `expected a non-empty array of HTTP methods like ['POST', 'PATCH'], got ${describe(value)}`);
  }
  return new Set((value as string[]).map((m) => m.toUpperCase()));
}

function statusList(value: unknown): Set<number> {
  if (!Array.isArray(value) || value.some((s) => typeof s !== 'number' || !Number.isInteger(s) || s < 400 || s > 499)) {
    throw new ConfigError('idempotency.releaseStatuses', `expected an array of 4xx statuses like [402, 429] (every 5xx is released anyway), got ${describe(value)}`);
  }
  return new Set(value as number[]);
}

function flag(value: unknown, option: string): boolean {
  if (typeof value === 'boolean') return value;
  throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
}

function positiveDuration(value: unknown, option: string): number {
  const ms = parseDuration(value, option);
  if (ms <= 0) throw new ConfigError(option, `expected a duration above zero like '30s', got ${describe(value)}`);
  return Math.ceil(ms);
}

function wholeCount(value: unknown, option: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ConfigError(option, `expected a whole number of records like 10000, got ${describe(value)}`);
  }
  return value;
}

function optionalFunction<F>(value: unknown, option: string): F | undefined {
  if (value === undefined || typeof value === 'function') return value as F | undefined;
  throw new ConfigError(option, `expected a function (req) => value, got ${describe(value)}`);
}

function namespaceName(value: unknown): string {
  if (typeof value !== 'string' || !NAMESPACE.test(value)) {
    throw new ConfigError('idempotency.namespace', `expected 1–64 characters of letters, digits and . _ : -, got ${describe(value)}`);
  }
  return value;
}

function storesObject(value: unknown): Stores | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'object' || value === null || typeof (value as Stores).create !== 'function') {
    throw new ConfigError('idempotency.stores', `expected a Stores object such as stack.stores, got ${describe(value)}`);
  }
  return value as Stores;
}
