import type { RequestHandler } from 'express';
import type { PerimeterRuntime } from './runtime';
import { bodyParser } from '../middleware/body-parser';
import { cors } from '../middleware/cors';
import { requestId } from '../middleware/request-id';
import { requestLogger } from '../middleware/request-logger';
import { securityHeaders } from '../middleware/security-headers';

/** A middleware as createStack builds it; run-time methods (block, invalidate…) hang off the handler. */
export type StackHandler = RequestHandler & { close?: () => Promise<void> | void };

/** What an entry's builder is given besides its own options. */
export interface EntryContext {
  runtime: PerimeterRuntime;
  /** The whole stack config, for entries that read a neighbour's options (bodyParser reads sizeLimit.max). */
  config: Record<string, unknown>;
}

/** One named place of the documented order. */
export interface StackEntry {
  name: string;
  /** On when the config does not mention it. */
  defaultOn: boolean;
  build(options: Record<string, unknown>, ctx: EntryContext): StackHandler;
}

/**
 * The documented order, outer to inner; the README gives the reason for each place.
 * requestId → requestLogger → metrics → securityHeaders → cors → ipFilter → sizeLimit → timeout →
 * bodyParser → auth → tenant → rateLimit → credits → sanitize → auditLog → featureFlags →
 * circuitBreaker → cache.
 */
export const STACK_ORDER = [
  'requestId',
  'requestLogger',
  'metrics',
  'securityHeaders',
  'cors',
  'ipFilter',
  'sizeLimit',
  'timeout',
  'bodyParser',
  'auth',
  'tenant',
  'rateLimit',
  'credits',
  'sanitize',
  'auditLog',
  'featureFlags',
  'circuitBreaker',
  'cache',
] as const;

/** The entries this version provides, keyed by name. */
export const STACK_ENTRIES: Record<string, StackEntry> = {
  requestId: { name: 'requestId', defaultOn: true, build: (o) => requestId(o) },
  requestLogger: { name: 'requestLogger', defaultOn: true, build: (o) => requestLogger(o) },
  securityHeaders: { name: 'securityHeaders', defaultOn: true, build: (o) => securityHeaders(o) },
  cors: { name: 'cors', defaultOn: false, build: (o) => cors(o) },
  bodyParser: {
    name: 'bodyParser',
    defaultOn: true,
    build: (o, { config }) => {
      const size = config.sizeLimit;
      const max = size && typeof size === 'object' ? (size as { max?: number | string }).max : undefined;
      return bodyParser({ ...o, limit: (o.limit as number | string | undefined) ?? max ?? '1mb' });
    },
  },
};
