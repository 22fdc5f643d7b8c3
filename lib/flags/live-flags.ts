import { ConfigError } from '../errors';
import type { Logger } from '../logger';
import { checkFlagName, compileFlag, compileFlags, definitionsOf, flagSet, type CompiledFlag, type FlagDefinition, type FlagInput, type FlagSet } from './definition';
import { evaluateFlag, type FlagResult, type FlagSubject } from './evaluate';
import type { FlagSource } from './sources';

/**
 * The flags in force for one `featureFlags()`: the `flags` option (the base) with the source's
 * flags laid over it by name. `current` is replaced whole, never mutated, so a request keeps one
 * consistent snapshot however a reload interleaves with it. Reloads run one at a time; a failed
 * one keeps the flags in force and is logged once per distinct failure.
 */
export class LiveFlags {
  /** The snapshot requests read. */
  current: FlagSet;
  /** Settles once the first load from the source has (loaded or failed); at once without a late source. */
  readonly firstLoad: Promise<void>;
  private overlay = new Map<string, CompiledFlag>();
  private readonly listeners = new Set<(changed: string[]) => void>();
  private lastFailure: string | undefined;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private closed = false;
  private readonly origin: string;
  /** The option a source's flags are reported under in errors. */
  private readonly sourceOption: string;

  constructor(
    private readonly base: Map<string, CompiledFlag>,
    private readonly source: FlagSource | undefined,
    private readonly logger: Logger,
  ) {
    this.origin = source === undefined ? 'options' : source.origin;
    this.sourceOption = source === undefined ? 'featureFlags.flags' : `featureFlags[${this.origin}]`;
    if (source?.initial !== undefined) this.overlay = new Map(compileFlags(source.initial, this.sourceOption).byName);
    this.current = this.merged();
    this.firstLoad = this.watch();
  }

  /** Validates and stores one flag: in the source when it takes writes, else in this instance's base. */
  async set(name: string, flag: FlagInput): Promise<void> {
    const option = `featureFlags.set('${String(name)}')`;
    const compiled = compileFlag(checkFlagName(name, option), flag, option);
    if (this.source === undefined) {
      this.base.set(name, compiled);
      this.swap();
      return;
    }
    if (this.source.set === undefined) {
      throw new ConfigError(option, `flags come from ${this.origin}; edit that file (it is reloaded on change) instead of calling set()`);
    }
    await this.source.set(name, compiled.definition);
    this.overlay = new Map(this.overlay).set(name, compiled);
    this.swap();
  }

  /** Removes one flag as {@link set} stores it. */
  async delete(name: string): Promise<void> {
    const option = `featureFlags.delete('${String(name)}')`;
    checkFlagName(name, option);
    if (this.source === undefined) {
      this.base.delete(name);
      this.swap();
      return;
    }
    if (this.source.delete === undefined) {
      throw new ConfigError(option, `flags come from ${this.origin}; edit that file (it is reloaded on change) instead of calling delete()`);
    }
    await this.source.delete(name);
    const next = new Map(this.overlay);
    next.delete(name);
    this.overlay = next;
    this.swap();
  }

  definitions(): Record<string, FlagDefinition> {
    return definitionsOf(this.current);
  }

  evaluate(name: string, subject: FlagSubject): FlagResult | undefined {
    const flag = this.current.byName.get(name);
    return flag === undefined ? undefined : evaluateFlag(flag, subject);
  }

  onChange(listener: (changed: string[]) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  // One load at a time; a reload asked for meanwhile runs once after it, so it sees every change
  // announced before it was asked for.
  reload(force: boolean): Promise<void> {
    if (this.running === undefined) {
      this.running = this.load(force).finally(() => {
        this.running = undefined;
      });
      return this.running;
    }
    this.queued ??= this.running
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.reload(true);
      });
    return this.queued;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listeners.clear();
    await this.source?.close();
  }

  /** Follows the source's announcements; the first load, when the source had nothing at setup. */
  private watch(): Promise<void> {
    const source = this.source;
    if (source === undefined) return Promise.resolve();
    const watching = source.watch(() => {
      if (!this.closed) void this.reload(false).catch(() => undefined);
    });
    if (source.initial !== undefined) return Promise.resolve();
    // The file was read at setup; the shared store is read now, without holding up any request,
    // and once more when the subscription is in place: a change announced between the first read
    // and the subscription would otherwise wait for the next sync.
    const loading = this.reload(true).catch(() => undefined);
    return Promise.all([loading, watching.then(() => (this.closed ? undefined : this.reload(true).catch(() => undefined)))]).then(() => undefined);
  }

  private async load(force: boolean): Promise<void> {
    if (this.source === undefined) return;
    try {
      const raw = await this.source.load(force);
      if (raw === undefined) return;
      this.overlay = new Map(compileFlags(raw, this.sourceOption).byName);
      const changed = this.swap();
      this.lastFailure = undefined;
      if (changed.length > 0) {
        this.logger.info('Feature flags reloaded', { code: 'FEATURE_FLAGS_RELOADED', source: this.origin, flags: this.current.list.length, changed });
      }
    } catch (err) {
      const e = err as Error;
      // Logged once per distinct failure: a bad file or an outage is not repeated every poll.
      if (e.message !== this.lastFailure) {
        this.lastFailure = e.message;
        const invalid = e instanceof ConfigError || e instanceof SyntaxError;
        this.logger.error(
          invalid
            ? 'Feature flags from the source were refused; the flags in force stay until a valid set arrives'
            : 'Feature flags could not be read from the source; the flags in force stay until it answers',
          { code: invalid ? 'FEATURE_FLAGS_INVALID' : 'FEATURE_FLAGS_SOURCE_ERROR', source: this.origin, reason: e.message },
        );
      }
      throw err;
    }
  }

  private merged(): FlagSet {
    const all = new Map(this.base);
    for (const [name, flag] of this.overlay) all.set(name, flag);
    return flagSet(all);
  }

  /** Puts a new snapshot in force; returns the names of the flags it changed. */
  private swap(): string[] {
    const before = this.current;
    this.current = this.merged();
    const changed = changedNames(before, this.current);
    if (changed.length === 0) return changed;
    for (const listener of this.listeners) {
      try {
        listener(changed);
      } catch (err) {
        this.logger.error('A featureFlags change listener threw', { code: 'FEATURE_FLAGS_LISTENER_ERROR', err: { name: (err as Error).name, message: (err as Error).message } });
      }
    }
    return changed;
  }
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
