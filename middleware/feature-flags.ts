import type { NextFunction, Request, Response } from 'express';
import { ConfigError } from '../lib/errors';
import { compileFlags, type CompiledFlag, type FlagDefinition, type FlagInput } from '../lib/flags/definition';
import type { FlagResult, FlagSubject } from '../lib/flags/evaluate';
import { LiveFlags } from '../lib/flags/live-flags';
import { countryReader, DEFAULT_COUNTRY_HEADERS, RequestFeatureSet } from '../lib/flags/request-features';
import { fileSource, storeSource, type FlagSource } from '../lib/flags/sources';
import { defaultLogger, type Logger } from '../lib/logger';
import { defineOptions, duration, loggerOption, option, passThrough, storesOption } from '../lib/options';
import { standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { flagsStore } from '../lib/stores/flags-store';
import { RedisStores } from '../lib/stores/redis';
import type { RedisOption } from '../lib/stores/redis-connection';
import type { Stores } from '../lib/stores/types';
import { describe, parseDuration } from '../lib/units';
import type { EntryContext } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';

export type { FlagDefinition, FlagInput } from '../lib/flags/definition';
export type { FlagReason, FlagResult, FlagSubject } from '../lib/flags/evaluate';

/** A JSON file of flags, watched and reloaded when it changes. */
export interface FlagFileSource {
  /** Path of the JSON file (relative to the working directory), holding `{ "name": { …definition } }`. */
  file: string;
  /** How often the file is polled, as a fallback where change events do not arrive (network and container mounts). Defaults to '2s'. */
  pollInterval?: number | string;
  /** Quiet time after a change event before the file is read, so an editor's several writes make one reload. Defaults to '100ms'. */
  debounce?: number | string;
}

/** Where flags come from: an object of flags, a JSON file path (or {@link FlagFileSource}), or 'redis' (the stack's shared store). */
export type FlagSourceOption = Record<string, FlagInput> | string | FlagFileSource | 'redis';

/** Options of {@link featureFlags}. */
export interface FeatureFlagsOptions {
  /** The flags, by name (a definition, or a boolean for `{ enabled }`); with a file or 'redis' source they are the base the source's flags override by name. Defaults to none. */
  flags?: Record<string, FlagInput>;
  /** Where flags come from after setup: an object, a JSON file (`'./flags.json'` or `{ file }`) reloaded on change, or 'redis' (the hash `<prefix>flags`, reloaded on every instance when `set()` publishes). Defaults to `flags` alone. */
  source?: FlagSourceOption;
  /** Headers the country is read from, first valid two-letter code wins; set them at your CDN, as a client can send them too. Defaults to ['CF-IPCountry', 'CloudFront-Viewer-Country', 'X-Country']. */
  countryHeaders?: string[];
  /** 'redis' source only: how often flags are reloaded in full, healing a missed announcement. Defaults to '30s'. */
  syncInterval?: number | string;
  /** 'redis' source only: the stores holding the flags (e.g. `stack.stores`). Defaults to the stack's stores, or process memory when used alone. */
  stores?: Stores;
  /** 'redis' source only, used alone: a Redis URL or ioredis client for the flags; `close()` closes a connection it opened. Defaults to none. */
  redis?: RedisOption;
  /** Logger for reloads and refused flag sets. Defaults to the stack's logger, else the default logger. */
  logger?: Logger;
}

/** The run-time methods of a {@link featureFlags} handler (also `stack.middleware.featureFlags`). */
export interface FeatureFlagsMethods {
  /** Validates and stores one flag: 'redis' source: written and published to every instance; no source or an object: this instance only; a file source refuses (edit the file). Rejects with a ConfigError for an invalid definition. */
  set(name: string, flag: FlagInput): Promise<void>;
  /** Removes one flag as `set()` stores it (a base flag of the same name, from `flags`, applies again). */
  delete(name: string): Promise<void>;
  /** The flags in force, as validated definitions by name. */
  definitions(): Record<string, FlagDefinition>;
  /** Evaluates one flag for a subject (user id, plan, tenant, country…); undefined when no such flag exists. */
  evaluate(name: string, subject?: FlagSubject): FlagResult | undefined;
  /** Reads the source again now; rejects (keeping the flags in force) when its flags are invalid or unreadable. */
  reload(): Promise<void>;
  /** Resolves once the first load from the source has settled (loaded or failed); at once for objects and files. */
  ready(): Promise<void>;
  /** Calls `listener` with the names of the flags that changed after each change; returns the remover. */
  onChange(listener: (changed: string[]) => void): () => void;
  /** Stops watching the source and closes a Redis connection opened for the `redis` option. */
  close(): Promise<void>;
}

// An interface, not an intersection: TypeScript infers a route's params from an intersection as `unknown`.
/** A {@link featureFlags} middleware with its run-time methods. */
export interface FeatureFlagsHandler extends PerimeterHandler, FeatureFlagsMethods {}

declare module '../lib/create-stack' {
  interface StackMiddleware {
    /** The stack's feature flags, with `set`, `delete`, `definitions`, `evaluate` and `reload` (present when `featureFlags` is configured). */
    featureFlags: FeatureFlagsHandler;
  }
}

// Every option of featureFlags() once: its default and its check (the interface's JSDoc is its doc).
// `source` and the options only it uses are checked together, in sourceOf.
const parseOptions = defineOptions<FeatureFlagsOptions>()('featureFlags', {
  flags: option('flags by name: definitions, or booleans', (value, path) => new Map(compileFlags(value as Record<string, FlagInput> | undefined, path).byName), '{}'),
  source: passThrough<FlagSourceOption>("an object of flags, a JSON file path, { file } or 'redis'"),
  countryHeaders: option("header names like ['CF-IPCountry']", countryHeaderNames, JSON.stringify(DEFAULT_COUNTRY_HEADERS)),
  syncInterval: option("a duration of at least 100 ms like '30s'", syncInterval, "'30s'"),
  stores: storesOption(),
  redis: passThrough<RedisOption>('a Redis URL or an ioredis client'),
  logger: loggerOption(),
});

const parseFileSource = defineOptions<FlagFileSource>()('featureFlags.source', {
  file: passThrough<string>('a path ending in .json'),
  pollInterval: option("a duration like '2s'", (value, path) => Math.max(10, parseDuration(value ?? '2s', path)), "'2s'"),
  debounce: duration('100ms'),
});

/**
 * Feature flags per request: `req.features.isEnabled(name)` and `req.features.all()`, each flag
 * evaluated on first use against the user, plan, tenant, country, path and a sticky percentage
 * rollout. Flags marked `expose` are evaluated up front and announced as `X-Feature-<name>: enabled`.
 * Flags live in memory; a file or Redis source replaces them whole on reload, and a set that
 * fails validation is refused while the flags in force stay.
 */
export function featureFlags(options: FeatureFlagsOptions = {}): FeatureFlagsHandler {
  return buildFeatureFlags(options, undefined);
}

/** @internal The stack's feature flags (createStack builds them): source 'redis' on the stack's stores, the stack's logger. */
export function stackFeatureFlags(options: FeatureFlagsOptions, { runtime }: EntryContext): FeatureFlagsHandler {
  return buildFeatureFlags(options, runtime);
}

function buildFeatureFlags(options: FeatureFlagsOptions, stackRuntime: PerimeterRuntime | undefined): FeatureFlagsHandler {
  const o = parseOptions(options);
  const readCountry = countryReader(o.countryHeaders);
  const logger = o.logger ?? stackRuntime?.logger ?? defaultLogger();
  const { source, ownStores, flags: fromSource } = sourceOf(o, logger, stackRuntime);
  // An object given as the source is the same as `flags`, laid over it.
  for (const [name, flag] of fromSource) o.flags.set(name, flag);
  const flags = new LiveFlags(o.flags, source, logger);

  const handler = function featureFlagsMiddleware(req: Request, res: Response, next: NextFunction): void {
    const ctx = req.context;
    let country = ctx?.country;
    if (country === undefined) {
      country = readCountry(req);
      if (country !== undefined && ctx !== undefined) ctx.country = country;
    }
    const snapshot = flags.current;
    const features = new RequestFeatureSet(snapshot, req, country);
    req.features = features;
    const exposed = snapshot.exposed;
    for (let i = 0; i < exposed.length; i++) {
      if (features.isEnabled(exposed[i].name)) res.setHeader(exposed[i].header, 'enabled');
    }
    next();
  } as FeatureFlagsHandler;

  handler.set = (name, flag) => flags.set(name, flag);
  handler.delete = (name) => flags.delete(name);
  handler.definitions = () => flags.definitions();
  handler.evaluate = (name, subject = {}) => flags.evaluate(name, subject);
  handler.reload = () => flags.reload(true);
  handler.ready = () => flags.firstLoad;
  handler.onChange = (listener) => flags.onChange(listener);
  let closing: Promise<void> | undefined;
  handler.close = () =>
    (closing ??= (async () => {
      await flags.close();
      await ownStores?.close();
    })());
  return handler;
}

type Parsed = ReturnType<typeof parseOptions>;

/**
 * Where flags come from after setup: the shared store ('redis'), a watched JSON file, or nothing
 * (an object source is compiled into `flags` here). `stores` and `redis` only mean something for 'redis'.
 */
function sourceOf(
  o: Parsed,
  logger: Logger,
  stackRuntime: PerimeterRuntime | undefined,
): { source: FlagSource | undefined; ownStores: RedisStores | undefined; flags: Map<string, CompiledFlag> } {
  const chosen = o.source;
  if (o.stores !== undefined && o.redis !== undefined) {
    throw new ConfigError('featureFlags.redis', 'give either stores or redis, not both: stores already says where the flags live');
  }
  if (chosen === 'redis') {
    const ownStores = o.redis !== undefined ? new RedisStores(o.redis, { logger }) : undefined;
    const stores = o.stores ?? ownStores ?? stackRuntime?.stores ?? standaloneRuntime().stores;
    return { source: storeSource(stores.create(flagsStore()), o.syncInterval, 'featureFlags.source'), ownStores, flags: new Map() };
  }
  if (o.redis !== undefined || o.stores !== undefined) {
    throw new ConfigError(o.redis !== undefined ? 'featureFlags.redis' : 'featureFlags.stores', "only applies to source: 'redis'; remove it or set source: 'redis'");
  }
  if (typeof chosen === 'string') {
    if (!chosen.endsWith('.json')) {
      throw new ConfigError('featureFlags.source', `expected 'redis', a path ending in .json, { file }, or an object of flags, got '${chosen}'`);
    }
    return { source: fileSource(chosen, { pollIntervalMs: 2000, debounceMs: 100 }, 'featureFlags.source'), ownStores: undefined, flags: new Map() };
  }
  if (chosen !== undefined && chosen !== null && typeof chosen === 'object' && !Array.isArray(chosen) && typeof (chosen as FlagFileSource).file === 'string') {
    const file = parseFileSource(chosen as FlagFileSource);
    return { source: fileSource(file.file as string, { pollIntervalMs: file.pollInterval, debounceMs: file.debounce }, 'featureFlags.source'), ownStores: undefined, flags: new Map() };
  }
  const flags = new Map(chosen === undefined ? [] : compileFlags(chosen, 'featureFlags.source').byName);
  return { source: undefined, ownStores: undefined, flags };
}

function countryHeaderNames(value: unknown, path: string): string[] {
  const headers = value ?? DEFAULT_COUNTRY_HEADERS;
  if (!Array.isArray(headers) || headers.some((h) => typeof h !== 'string' || !/^[A-Za-z0-9-]+$/.test(h))) {
    throw new ConfigError(path, `expected an array of header names like ['CF-IPCountry'], got ${describe(headers)}`);
  }
  return headers as string[];
}

function syncInterval(value: unknown, path: string): number {
  const ms = parseDuration(value ?? '30s', path);
  if (ms < 100) throw new ConfigError(path, `expected at least 100 ms, got ${ms}`);
  return ms;
}
