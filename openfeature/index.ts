import type { Request } from 'express';
import type {
  ErrorCode,
  EvaluationContext,
  JsonValue,
  Provider,
  OpenFeatureEventEmitter,
  ResolutionDetails,
} from '@openfeature/server-sdk';
import { countryReader, DEFAULT_COUNTRY_HEADERS } from '../lib/flags/request-features';
import { featureFlags, type FeatureFlagsHandler, type FeatureFlagsOptions, type FlagSubject } from '../middleware/feature-flags';

// Only types come from the SDK at compile time; the one value used (the event emitter) is
// required lazily, so `express-perimeter` works for users who never install OpenFeature.

const FLAG_NOT_FOUND = 'FLAG_NOT_FOUND' as unknown as ErrorCode;
const TYPE_MISMATCH = 'TYPE_MISMATCH' as unknown as ErrorCode;
const PROVIDER_NOT_READY = 'PROVIDER_NOT_READY' as unknown as ErrorCode;
const TARGETING_KEY_MISSING = 'TARGETING_KEY_MISSING' as unknown as ErrorCode;
const readCountry = countryReader(DEFAULT_COUNTRY_HEADERS);

// After a failed initialisation the source is read again on this schedule (doubling up to the
// cap, unref'd) until it loads, and the provider announces PROVIDER_READY.
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

/** Where the provider stands: its flags are usable only once the source has loaded. */
type ProviderState = 'NOT_READY' | 'READY' | 'ERROR' | 'CLOSED';

/**
 * An OpenFeature server provider over express-perimeter's feature flags: the same flags, the same
 * evaluation and the same sticky rollout as `req.features`, reachable through
 * `OpenFeature.getClient().getBooleanValue(name, false, context)`. Context keys: `targetingKey`
 * (the user id, else the client IP: what the rollout sticks to), `plan`, `tenant`, `country`,
 * `beta`, `route`, `ip`. Flags are boolean: the string, number and object resolvers answer
 * TYPE_MISMATCH for a flag that exists.
 *
 * As the OpenFeature specification asks: a disabled flag resolves to the caller's default with
 * reason DISABLED; a percentage rollout evaluated without a `targetingKey` resolves to the
 * default with TARGETING_KEY_MISSING; a source that cannot be read (Redis down, flags that do not
 * validate) fails `initialize()`, so the SDK reports PROVIDER_ERROR, and every evaluation answers
 * PROVIDER_NOT_READY with the default until the source loads (retried in the background), when
 * the provider emits PROVIDER_READY.
 */
export class PerimeterProvider implements Provider {
  /** The provider's name as OpenFeature reports it. */
  readonly metadata = { name: 'express-perimeter' } as const;
  /** Server-side provider (evaluates per call, with the caller's context). */
  readonly runsOn = 'server' as const;
  /** Emits PROVIDER_CONFIGURATION_CHANGED with `flagsChanged` when the flags reload, and PROVIDER_READY when a source that failed initialisation loads. */
  readonly events?: OpenFeatureEventEmitter;
  private readonly flags: FeatureFlagsHandler;
  private readonly owned: boolean;
  private readonly stopListening?: () => void;
  private readonly sdk: SdkValues | undefined;
  private state: ProviderState = 'NOT_READY';
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelay = RETRY_FIRST_MS;

  /**
   * @param source A featureFlags handler (`stack.middleware.featureFlags`, so both answer alike),
   * or featureFlags options for a provider of its own (closed with the provider).
   */
  constructor(source: FeatureFlagsHandler | FeatureFlagsOptions) {
    if (typeof source === 'function') {
      this.flags = source;
      this.owned = false;
    } else {
      this.flags = featureFlags(source);
      this.owned = true;
    }
    this.sdk = loadSdk();
    if (this.sdk !== undefined) {
      const sdk = this.sdk;
      const events = new sdk.OpenFeatureEventEmitter();
      this.events = events as unknown as OpenFeatureEventEmitter;
      this.stopListening = this.flags.onChange((changed) => events.emit(sdk.ProviderEvents.ConfigurationChanged, { flagsChanged: changed }));
    }
  }

  /**
   * Reads the flags from their source: resolves once they loaded; rejects when the source cannot
   * be read or its flags do not validate (the SDK then reports PROVIDER_ERROR), and keeps trying
   * in the background.
   */
  async initialize(): Promise<void> {
    if (this.state === 'CLOSED') throw new Error('This PerimeterProvider was closed; make a new one.');
    try {
      await this.load();
    } catch (err) {
      this.state = 'ERROR';
      this.scheduleRetry();
      throw new Error(`The feature flags could not be loaded from their source: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /** Stops forwarding changes and retrying, and closes the flags when the provider made them. */
  async onClose(): Promise<void> {
    this.state = 'CLOSED';
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.stopListening?.();
    if (this.owned) await this.flags.close();
  }

  /**
   * Evaluates a flag: reason 'STATIC', 'TARGETING_MATCH', 'SPLIT' or 'DEFAULT' with variant
   * 'on'/'off'; the caller's default with 'DISABLED' for a disabled flag; errors FLAG_NOT_FOUND,
   * TARGETING_KEY_MISSING, PROVIDER_NOT_READY with the caller's default.
   */
  async resolveBooleanEvaluation(flagKey: string, defaultValue: boolean, context: EvaluationContext): Promise<ResolutionDetails<boolean>> {
    if (this.state !== 'READY') return this.notReady(defaultValue);
    const subject = subjectOf(context);
    const result = this.flags.evaluate(flagKey, subject);
    if (result === undefined) return notFound(flagKey, defaultValue);
    if (result.reason === 'DISABLED') return { value: defaultValue, reason: 'DISABLED' };
    if (result.reason === 'SPLIT' && subject.userId === undefined && subject.ip === undefined && this.needsKey(flagKey)) {
      return {
        value: defaultValue,
        reason: 'ERROR',
        errorCode: TARGETING_KEY_MISSING,
        errorMessage: `Flag '${flagKey}' is a percentage rollout: give a targetingKey (the user id) to evaluate it`,
      };
    }
    return { value: result.value, reason: result.reason, variant: result.value ? 'on' : 'off' };
  }

  /** Flags are boolean: TYPE_MISMATCH for a flag that exists, FLAG_NOT_FOUND otherwise. */
  async resolveStringEvaluation(flagKey: string, defaultValue: string): Promise<ResolutionDetails<string>> {
    return this.notBoolean(flagKey, defaultValue);
  }

  /** Flags are boolean: TYPE_MISMATCH for a flag that exists, FLAG_NOT_FOUND otherwise. */
  async resolveNumberEvaluation(flagKey: string, defaultValue: number): Promise<ResolutionDetails<number>> {
    return this.notBoolean(flagKey, defaultValue);
  }

  /** Flags are boolean: TYPE_MISMATCH for a flag that exists, FLAG_NOT_FOUND otherwise. */
  async resolveObjectEvaluation<T extends JsonValue>(flagKey: string, defaultValue: T): Promise<ResolutionDetails<T>> {
    return this.notBoolean(flagKey, defaultValue);
  }

  private notBoolean<T>(flagKey: string, defaultValue: T): ResolutionDetails<T> {
    if (this.state !== 'READY') return this.notReady(defaultValue);
    if (this.flags.evaluate(flagKey) === undefined) return notFound(flagKey, defaultValue);
    return {
      value: defaultValue,
      reason: 'ERROR',
      errorCode: TYPE_MISMATCH,
      errorMessage: `Flag '${flagKey}' is a boolean; use getBooleanValue()`,
    };
  }

  private notReady<T>(defaultValue: T): ResolutionDetails<T> {
    return {
      value: defaultValue,
      reason: 'ERROR',
      errorCode: PROVIDER_NOT_READY,
      errorMessage: this.state === 'CLOSED' ? 'The provider was closed' : 'The feature flags have not been loaded from their source yet',
    };
  }

  /** Whether the rollout needs someone to stick to: a percentage strictly between 0 and 100 (at 0 or 100 nobody is split). */
  private needsKey(flagKey: string): boolean {
    const percentage = this.flags.definitions()[flagKey]?.percentage;
    return percentage !== undefined && percentage > 0 && percentage < 100;
  }

  // ready() settles on the first load whatever its outcome; reload() reads the source once more
  // and rejects when it cannot be read or its flags do not validate, which is what tells.
  private async load(): Promise<void> {
    await this.flags.ready();
    await this.flags.reload();
    if (this.state !== 'CLOSED') this.state = 'READY';
  }

  private scheduleRetry(): void {
    if (this.state !== 'ERROR' || this.retryTimer !== undefined) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.load().then(
        () => {
          if (this.state === 'READY' && this.sdk !== undefined) (this.events as unknown as SdkEmitter).emit(this.sdk.ProviderEvents.Ready);
        },
        () => {
          this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
          this.scheduleRetry();
        },
      );
    }, this.retryDelay).unref();
  }
}

/**
 * The OpenFeature evaluation context of a request, as `req.features` sees it: `targetingKey` (the
 * user id, else the client IP), `plan` (`req.user.plan`, else `req.auth.tier`), `tenant`, `country`, `beta`, `route`
 * (the full path) and `ip`.
 */
export function contextFromRequest(req: Request): EvaluationContext {
  const ctx: EvaluationContext = {};
  const user = req.user;
  const id = user?.id as unknown;
  // The rollout sticks to the user, else to the client address (as req.features does).
  if (typeof id === 'string' || typeof id === 'number') ctx.targetingKey = String(id);
  else if (req.ip !== undefined) ctx.targetingKey = req.ip;
  const plan = typeof user?.plan === 'string' ? user.plan : req.auth?.tier;
  if (typeof plan === 'string') ctx.plan = plan;
  if (typeof req.tenant?.id === 'string') ctx.tenant = req.tenant.id;
  const country = req.context?.country ?? readCountry(req);
  if (country !== undefined) ctx.country = country;
  if (user !== undefined) ctx.beta = user.beta === true;
  ctx.route = req.baseUrl ? req.baseUrl + req.path : req.path;
  if (req.ip !== undefined) ctx.ip = req.ip;
  return ctx;
}

function subjectOf(context: EvaluationContext): FlagSubject {
  const s: FlagSubject = {};
  const key = context.targetingKey;
  // A targetingKey that is the client address (contextFromRequest for an anonymous request) is
  // what the rollout sticks to, not a user id a `users` list could name.
  if (typeof key === 'string' && key !== '') {
    if (key === context.ip) s.ip = key;
    else s.userId = key;
  }
  if (typeof context.plan === 'string') s.plan = context.plan;
  if (typeof context.tenant === 'string') s.tenant = context.tenant;
  if (typeof context.country === 'string') s.country = context.country.toUpperCase();
  if (context.beta === true || context.beta === 'true') s.beta = true;
  const route = context.route ?? context.path;
  if (typeof route === 'string') s.path = route;
  return s;
}

function notFound<T>(flagKey: string, defaultValue: T): ResolutionDetails<T> {
  return { value: defaultValue, reason: 'ERROR', errorCode: FLAG_NOT_FOUND, errorMessage: `No flag named '${flagKey}'` };
}

interface SdkEmitter {
  emit(event: string, details?: unknown): void;
}

interface SdkValues {
  OpenFeatureEventEmitter: new () => SdkEmitter;
  ProviderEvents: { ConfigurationChanged: string; Ready: string };
}

function loadSdk(): SdkValues | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- optional peer dependency, loaded only when a provider is built
    return require('@openfeature/server-sdk') as SdkValues;
  } catch {
    return undefined;
  }
}
