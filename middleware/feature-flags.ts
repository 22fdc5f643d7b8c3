import type { NextFunction, Request, Response } from 'express';
import { ConfigError } from '../lib/errors';
import {
  checkFlagName,
  compileFlag,
  compileFlags,
  definitionsOf,
  flagSet,
  type CompiledFlag,
  type FlagDefinition,
  type FlagInput,
  type FlagSet,
} from '../lib/flags/definition';
import { evaluateFlag, type FlagResult, type FlagSubject } from '../lib/flags/evaluate';
import { countryReader, DEFAULT_COUNTRY_HEADERS, RequestFeatureSet } from '../lib/flags/request-features';
import { fileSource, storeSource, type FlagSource } from '../lib/flags/sources';
import { defaultLogger, type Logger } from '../lib/logger';
import { checkOptions } from '../lib/options';
import { standaloneRuntime, type PerimeterRuntime } from '../lib/runtime';
import { flagsStore } from '../lib/stores/flags-store';
import { RedisStores } from '../lib/stores/redis';
import type { RedisOption } from '../lib/stores/redis-connection';
import type { Stores } from '../lib/stores/types';
import { describe, parseDuration } from '../lib/units';
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

const KNOWN = ['flags', 'source', 'countryHeaders', 'syncInterval', 'stores', 'redis', 'logger'] as const;
const FILE_KEYS = ['file', 'pollInterval', 'debounce'] as const;

/**
 * Feature flags per request: `req.features.isEnabled(name)` and `req.features.all()`, each flag
 * evaluated on first use against the user, plan, tenant, country, path and a sticky percentage
 * rollout. Flags marked `expose` are evaluated up front and announced as `X-Feature-<name>: enabled`.
 * Flags live in memory; a file or Redis source replaces them whole on reload, and a set that
 * fails validation is refused while the flags in force stay.
 */
export function featureFlags(options: FeatureFlagsOptions = {}): FeatureFlagsHandler {
  return createFeatureFlags(options);
}

/**
 * {@link featureFlags} bound to a stack's runtime (its stores and logger): what createStack builds.
 * Not part of the public API.
 * @internal
 */
export function createFeatureFlags(options: FeatureFlagsOptions = {}, stackRuntime?: PerimeterRuntime): FeatureFlagsHandler {
  checkOptions('featureFlags', options, KNOWN);
  const base = new Map(compileFlags(options.flags, 'featureFlags.flags').byName);
  const headers = options.countryHeaders ?? DEFAULT_COUNTRY_HEADERS;
  if (!Array.isArray(headers) || headers.some((h) => typeof h !== 'string' || !/^[A-Za-z0-9-]+$/.test(h))) {
    throw new ConfigError('featureFlags.countryHeaders', `expected an array of header names like ['CF-IPCountry'], got ${describe(headers)}`);
  }
  const readCountry = countryReader(headers);
  const syncIntervalMs = parseDuration(options.syncInterval ?? '30s', 'featureFlags.syncInterval');
  if (syncIntervalMs < 100) throw new ConfigError('featureFlags.syncInterval', `expected at least 100 ms, got ${syncIntervalMs}`);
  if (options.logger !== undefined && (typeof options.logger !== 'object' || typeof options.logger?.error !== 'function')) {
    throw new ConfigError('featureFlags.logger', `expected a winston logger, got ${describe(options.logger)}`);
  }
  if (options.stores !== undefined && (typeof options.stores !== 'object' || typeof options.stores?.create !== 'function')) {
    throw new ConfigError('featureFlags.stores', `expected a Stores object such as stack.stores, got ${describe(options.stores)}`);
  }
  if (options.stores !== undefined && options.redis !== undefined) {
    throw new ConfigError('featureFlags.redis', 'give either stores or redis, not both: stores already says where the flags live');
  }
  const logger = options.logger ?? stackRuntime?.logger ?? defaultLogger();

  let ownStores: RedisStores | undefined;
  let source: FlagSource | undefined;
  const chosen = options.source;
  if (chosen === 'redis') {
    ownStores = options.redis !== undefined ? new RedisStores(options.redis, { logger }) : undefined;
    const stores = options.stores ?? ownStores ?? stackRuntime?.stores ?? standaloneRuntime().stores;
    source = storeSource(stores.create(flagsStore()), syncIntervalMs, 'featureFlags.source');
  } else if (options.redis !== undefined || options.stores !== undefined) {
    throw new ConfigError(options.redis !== undefined ? 'featureFlags.redis' : 'featureFlags.stores', "only applies to source: 'redis'; remove it or set source: 'redis'");
  } else if (typeof chosen === 'string') {
    if (!chosen.endsWith('.json')) {
      throw new ConfigError('featureFlags.source', `expected 'redis', a path ending in .json, { file }, or an object of flags, got '${chosen}'`);
    }
    source = fileSource(chosen, { pollIntervalMs: 2000, debounceMs: 100 }, 'featureFlags.source');
  } else if (chosen !== undefined && chosen !== null && typeof chosen === 'object' && !Array.isArray(chosen) && typeof (chosen as FlagFileSource).file === 'string') {
    const file = checkOptions('featureFlags.source', chosen as FlagFileSource, FILE_KEYS);
    source = fileSource(
      file.file,
      {
        pollIntervalMs: Math.max(10, parseDuration(file.pollInterval ?? '2s', 'featureFlags.source.pollInterval')),
        debounceMs: parseDuration(file.debounce ?? '100ms', 'featureFlags.source.debounce'),
      },
      'featureFlags.source',
    );
  } else if (chosen !== undefined) {
    // An object of flags: the same as `flags`, laid over it.
    for (const [name, flag] of compileFlags(chosen, 'featureFlags.source').byName) base.set(name, flag);
  }
  const origin = source === undefined ? 'options' : source.origin;
  const sourceOption = source === undefined ? 'featureFlags.flags' : `featureFlags[${origin}]`;

  // The source's flags, laid over `base` by name; `current` is replaced whole, never mutated, so a
  // request keeps one consistent snapshot however a reload interleaves with it.
  let overlay = new Map<string, CompiledFlag>();
  if (source?.initial !== undefined) overlay = new Map(compileFlags(source.initial, sourceOption).byName);
  let current: FlagSet = merged();
  const listeners = new Set<(changed: string[]) => void>();
  let lastFailure: string | undefined;

  function merged(): FlagSet {
    const all = new Map(base);
    for (const [name, flag] of overlay) all.set(name, flag);
    return flagSet(all);
  }

  /** Puts a new snapshot in force; returns the names of the flags it changed. */
  function swap(): string[] {
    const before = current;
    current = merged();
    const changed = changedNames(before, current);
    if (changed.length === 0) return changed;
    for (const listener of listeners) {
      try {
        listener(changed);
      } catch (err) {
        logger.error('A featureFlags change listener threw', { code: 'FEATURE_FLAGS_LISTENER_ERROR', err: { name: (err as Error).name, message: (err as Error).message } });
      }
    }
    return changed;
  }

  async function load(force: boolean): Promise<void> {
    if (source === undefined) return;
    try {
      const raw = await source.load(force);
      if (raw === undefined) return;
      const next = compileFlags(raw, sourceOption);
      overlay = new Map(next.byName);
      const changed = swap();
      lastFailure = undefined;
      if (changed.length > 0) logger.info('Feature flags reloaded', { code: 'FEATURE_FLAGS_RELOADED', source: origin, flags: current.list.length, changed });
    } catch (err) {
      const e = err as Error;
      // Logged once per distinct failure: a bad file or an outage is not repeated every poll.
      if (e.message !== lastFailure) {
        lastFailure = e.message;
        const invalid = e instanceof ConfigError || e instanceof SyntaxError;
        logger.error(
          invalid
            ? 'Feature flags from the source were refused; the flags in force stay until a valid set arrives'
            : 'Feature flags could not be read from the source; the flags in force stay until it answers',
          { code: invalid ? 'FEATURE_FLAGS_INVALID' : 'FEATURE_FLAGS_SOURCE_ERROR', source: origin, reason: e.message },
        );
      }
      throw err;
    }
  }

  // One load at a time; a reload asked for meanwhile runs once after it, so it sees every change
  // announced before it was asked for.
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  function reload(force: boolean): Promise<void> {
    if (running === undefined) {
      running = load(force).finally(() => {
        running = undefined;
      });
      return running;
    }
    queued ??= running
      .catch(() => undefined)
      .then(() => {
        queued = undefined;
        return reload(true);
      });
    return queued;
  }

  let firstLoad: Promise<void> = Promise.resolve();
  let closed = false;
  if (source !== undefined) {
    const watching = source.watch(() => {
      if (!closed) void reload(false).catch(() => undefined);
    });
    // The file was read at setup; the shared store is read now, without holding up any request,
    // and once more when the subscription is in place: a change announced between the first read
    // and the subscription would otherwise wait for the next sync.
    if (source.initial === undefined) {
      const loading = reload(true).catch(() => undefined);
      firstLoad = Promise.all([loading, watching.then(() => (closed ? undefined : reload(true).catch(() => undefined)))]).then(() => undefined);
    }
  }

  const handler = function featureFlagsMiddleware(req: Request, res: Response, next: NextFunction): void {
    const ctx = req.context;
    let country = ctx?.country;
    if (country === undefined) {
      country = readCountry(req);
      if (country !== undefined && ctx !== undefined) ctx.country = country;
    }
    const snapshot = current;
    const features = new RequestFeatureSet(snapshot, req, country);
    req.features = features;
    const exposed = snapshot.exposed;
    for (let i = 0; i < exposed.length; i++) {
      if (features.isEnabled(exposed[i].name)) res.setHeader(exposed[i].header, 'enabled');
    }
    next();
  } as FeatureFlagsHandler;

  handler.set = async (name: string, flag: FlagInput): Promise<void> => {
    const option = `featureFlags.set('${String(name)}')`;
    const compiled = compileFlag(checkFlagName(name, option), flag, option);
    if (source === undefined) {
      base.set(name, compiled);
      swap();
      return;
    }
    if (source.set === undefined) {
      throw new ConfigError(option, `flags come from ${origin}; edit that file (it is reloaded on change) instead of calling set()`);
    }
    await source.set(name, compiled.definition);
    overlay = new Map(overlay).set(name, compiled);
    swap();
  };

  handler.delete = async (name: string): Promise<void> => {
    const option = `featureFlags.delete('${String(name)}')`;
    checkFlagName(name, option);
    if (source === undefined) {
      base.delete(name);
      swap();
      return;
    }
    if (source.delete === undefined) {
      throw new ConfigError(option, `flags come from ${origin}; edit that file (it is reloaded on change) instead of calling delete()`);
    }
    await source.delete(name);
    const next = new Map(overlay);
    next.delete(name);
    overlay = next;
    swap();
  };

  handler.definitions = () => definitionsOf(current);
  handler.evaluate = (name: string, subject: FlagSubject = {}): FlagResult | undefined => {
    const flag = current.byName.get(name);
    return flag === undefined ? undefined : evaluateFlag(flag, subject);
  };
  handler.reload = () => reload(true);
  handler.ready = () => firstLoad;
  handler.onChange = (listener) => {
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
    };
  };
  handler.close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    listeners.clear();
    await source?.close();
    await ownStores?.close();
  };
  return handler;
}

/** Names whose definition differs between two snapshots (added, removed or changed). */
function changedNames(before: FlagSet, after: FlagSet): string[] {
  const changed: string[] = [];
  for (const flag of after.list) {
    const old = before.byName.get(flag.name);
    if (old === undefined || (old !== flag && JSON.stringify(old.definition) !== JSON.stringify(flag.definition))) changed.push(flag.name);
  }
  for (const flag of before.list) if (!after.byName.has(flag.name)) changed.push(flag.name);
  return changed;
}
