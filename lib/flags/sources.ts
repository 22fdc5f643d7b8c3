import { readFileSync, watch, watchFile, unwatchFile, type FSWatcher, type Stats } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { ConfigError } from '../errors';
import type { FlagsStore } from '../stores/flags-store';
import type { FlagDefinition } from './definition';

/**
 * Where flag definitions come from after setup. Sources only read and announce: validating a
 * set and swapping it in (or refusing it) is the caller's job, the same for every source.
 */
export interface FlagSource {
  /** Where the flags live, for log lines and errors. */
  readonly origin: string;
  /** The definitions readable at setup, taken before the first request; undefined when they arrive later. */
  readonly initial?: Record<string, unknown>;
  /** Reads every definition; resolves to undefined when nothing changed since the last read (unless `force`). */
  load(force: boolean): Promise<Record<string, unknown> | undefined>;
  /** Starts announcing changes through `onChange`; resolves once announcements are sure to arrive (subscribed), or the attempt failed. */
  watch(onChange: () => void): Promise<void>;
  /** Writes one flag for every instance; absent on read-only sources. */
  set?(name: string, definition: FlagDefinition): Promise<void>;
  /** Removes one flag for every instance; absent on read-only sources. */
  delete?(name: string): Promise<void>;
  /** Stops watching. */
  close(): Promise<void>;
}

/** Options of {@link fileSource}. */
export interface FileSourceOptions {
  /** How often the file's stat is polled, as a fallback for file systems where change events do not arrive. */
  pollIntervalMs: number;
  /** Quiet time after the last change event before reading, so an editor's several writes make one reload. */
  debounceMs: number;
}

/**
 * Flags in a JSON file (`{ "new-ui": { "percentage": 30 } }`): read at setup, then watched with
 * fs.watch on the directory (an editor that saves by rename replaces the file's inode, which a
 * watch on the file itself would lose) and with stat polling as the fallback. Every timer and
 * watcher is unref'd: watching never keeps the process alive.
 */
export function fileSource(path: string, options: FileSourceOptions, option: string): FlagSource {
  const full = resolve(path);
  let text: string;
  try {
    text = readFileSync(full, 'utf8');
  } catch (err) {
    throw new ConfigError(option, `cannot read the flag file ${full}: ${(err as Error).message}`);
  }
  const initial = parseFlagFile(text, full, option);
  let lastText = text;
  let watcher: FSWatcher | undefined;
  let polling = false;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  return {
    origin: full,
    initial,
    async load(force) {
      const next = await readFile(full, 'utf8');
      if (!force && next === lastText) return undefined;
      const parsed = parseFlagFile(next, full, option);
      lastText = next;
      return parsed;
    },
    async watch(onChange) {
      const schedule = (): void => {
        if (closed) return;
        if (timer !== undefined) clearTimeout(timer);
        timer = setTimeout(() => {
          timer = undefined;
          if (!closed) onChange();
        }, options.debounceMs);
        timer.unref();
      };
      const name = basename(full);
      try {
        watcher = watch(dirname(full), { persistent: false }, (_event, changed) => {
          if (changed === null || changed === undefined || String(changed) === name) schedule();
        });
        // The directory went away or the watch broke: polling carries on alone.
        watcher.on('error', () => {
          watcher?.close();
          watcher = undefined;
        });
      } catch {
        watcher = undefined;
      }
      watchFile(full, { persistent: false, interval: options.pollIntervalMs }, (curr: Stats, prev: Stats) => {
        if (curr.mtimeMs !== prev.mtimeMs || curr.size !== prev.size || curr.ino !== prev.ino) schedule();
      });
      polling = true;
    },
    async close() {
      closed = true;
      if (timer !== undefined) clearTimeout(timer);
      watcher?.close();
      watcher = undefined;
      if (polling) unwatchFile(full);
      polling = false;
    },
  };
}

function parseFlagFile(text: string, file: string, option: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(option, `the flag file ${file} is not valid JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError(option, `the flag file ${file} must hold an object of flags like { "new-ui": { "percentage": 30 } }`);
  }
  return parsed as Record<string, unknown>;
}

/**
 * Flags in the stack's shared store (the Redis hash `<prefix>flags`, or process memory): loaded
 * at start, reloaded on every announced change, on reconnection (announcements sent while the
 * subscriber was down are lost) and every `syncIntervalMs` as a safety net.
 */
export function storeSource(store: FlagsStore, syncIntervalMs: number, option: string): FlagSource {
  let unsubscribe: Promise<(() => Promise<void>) | undefined> | undefined;
  let removeResync: (() => void) | undefined;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;

  return {
    origin: store.location,
    async load() {
      let raw: Record<string, string>;
      try {
        raw = await store.load();
      } catch (err) {
        // One message for the whole outage, whatever each attempt met (a timeout, a refused
        // connection), so it is logged once; the connection logs the cause.
        throw new Error(`the flag store (${store.location}) is unavailable`, { cause: err });
      }
      const out: Record<string, unknown> = {};
      for (const [name, json] of Object.entries(raw)) {
        try {
          out[name] = JSON.parse(json);
        } catch {
          throw new ConfigError(`${option}.${name}`, `the stored definition is not valid JSON (${store.location})`);
        }
      }
      return out;
    },
    async watch(onChange) {
      // A failed subscription is healed by the timer (and ioredis resubscribes on reconnect).
      unsubscribe = store
        .subscribe(() => {
          if (!closed) onChange();
        })
        .catch(() => undefined);
      removeResync = store.onResync(() => {
        if (!closed) onChange();
      });
      timer = setInterval(() => {
        if (!closed) onChange();
      }, syncIntervalMs);
      timer.unref();
      await unsubscribe;
    },
    set(name, definition) {
      return store.set(name, JSON.stringify(definition));
    },
    delete(name) {
      return store.delete(name);
    },
    async close() {
      closed = true;
      if (timer !== undefined) clearInterval(timer);
      removeResync?.();
      const off = await unsubscribe;
      await off?.().catch(() => undefined);
    },
  };
}
