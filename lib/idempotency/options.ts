import type { Request } from 'express';
import type { IdempotencyOptions } from '../../middleware/idempotency';
import { ConfigError } from '../errors';
import { bytes, callback, choice, count, defineOptions, flag, headerName, httpMethods, namespace, option, passThrough, positiveDuration, storesOption } from '../options';
import type { RedisOption } from '../stores/redis-connection';
import type { Stores } from '../stores/types';
import { describe } from '../units';
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

/** The lock of a request when neither `lockTtl` nor a stack's timeout says otherwise. */
export const DEFAULT_LOCK_TTL_MS = 60_000;
const MS_PER_SECOND = 1000;

// Every option of idempotency() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<IdempotencyOptions>()('idempotency', {
  header: headerName('Idempotency-Key'),
  methods: httpMethods(['POST', 'PATCH']),
  required: flag(false),
  ttl: positiveDuration('24h'),
  lockTtl: positiveDuration(DEFAULT_LOCK_TTL_MS),
  retryAfter: positiveDuration('1s'),
  maxBodySize: bytes('1mb'),
  scope: option("'user', 'tenant', 'global' or (req) => string", (value) => scopeOf(value as Parameters<typeof scopeOf>[0]), "'user'"),
  fingerprint: callback<(req: Request) => unknown>('(req) => value'),
  releaseStatuses: option('4xx statuses like [402, 429]', statusList, '[401, 402, 408, 413, 425, 429, 499]'),
  releaseOnDisconnect: flag(true),
  keepLockOnTimeout: flag(false),
  onStoreError: choice(['open', 'closed'], 'open'),
  storeTimeout: positiveDuration('100ms'),
  namespace: namespace('idempotency'),
  maxEntries: count(10_000, 'records'),
  maxBytes: bytes('64mb'),
  stores: storesOption(),
  redis: passThrough<RedisOption>('Redis connection options, a URL or an ioredis client'),
});

/** The table of idempotency(), for docs. */
export const IDEMPOTENCY_OPTIONS = parseOptions.table;

/** Checks every option of `idempotency()` once and turns it into the settings the middleware runs on. */
export function parseIdempotencyOptions(options: IdempotencyOptions): IdempotencyConfig {
  const p = parseOptions(options);
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
    retryAfterSeconds: Math.max(1, Math.ceil(p.retryAfter / MS_PER_SECOND)),
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

function statusList(value: unknown, path: string): Set<number> {
  value ??= [401, 402, 408, 413, 425, 429, 499];
  if (!Array.isArray(value) || value.some((s) => typeof s !== 'number' || !Number.isInteger(s) || s < 400 || s > 499)) {
    throw new ConfigError(path, `expected an array of 4xx statuses like [402, 429] (every 5xx is released anyway), got ${describe(value)}`);
  }
  return new Set(value as number[]);
}

