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
const readCountry = countryReader(DEFAULT_COUNTRY_HEADERS);

/**
 * An OpenFeature server provider over express-perimeter's feature flags: the same flags, the same
 * evaluation and the same sticky rollout as `req.features`, reachable through
 * `OpenFeature.getClient().getBooleanValue(name, false, context)`. Context keys: `targetingKey`
 * (the user id), `plan`, `tenant`, `country`, `beta`, `route`, `ip`. Flags are boolean: the
 * string, number and object resolvers answer TYPE_MISMATCH for a flag that exists.
 */
export class PerimeterProvider implements Provider {
  /** The provider's name as OpenFeature reports it. */
  readonly metadata = { name: 'express-perimeter' } as const;
  /** Server-side provider (evaluates per call, with the caller's context). */
  readonly runsOn = 'server' as const;
  /** Emits PROVIDER_CONFIGURATION_CHANGED with `flagsChanged` when the flags reload. */
  readonly events?: OpenFeatureEventEmitter;
  private readonly flags: FeatureFlagsHandler;
  private readonly owned: boolean;
  private readonly stopListening?: () => void;

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
    const sdk = loadSdk();
    if (sdk !== undefined) {
      const events = new sdk.OpenFeatureEventEmitter();
      this.events = events as unknown as OpenFeatureEventEmitter;
      this.stopListening = this.flags.onChange((changed) => events.emit(sdk.ProviderEvents.ConfigurationChanged, { flagsChanged: changed }));
    }
  }

  /** Waits for the first load of the flags (a 'redis' source loads after setup). */
  async initialize(): Promise<void> {
    await this.flags.ready();
  }

  /** Stops forwarding changes, and closes the flags when the provider made them. */
  async onClose(): Promise<void> {
    this.stopListening?.();
    if (this.owned) await this.flags.close();
  }

  /** Evaluates a flag: reason 'STATIC', 'TARGETING_MATCH', 'SPLIT', 'DISABLED' or 'DEFAULT'; FLAG_NOT_FOUND for an unknown flag. */
  async resolveBooleanEvaluation(flagKey: string, defaultValue: boolean, context: EvaluationContext): Promise<ResolutionDetails<boolean>> {
    const result = this.flags.evaluate(flagKey, subjectOf(context));
    if (result === undefined) return notFound(flagKey, defaultValue);
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
    if (this.flags.evaluate(flagKey) === undefined) return notFound(flagKey, defaultValue);
    return {
      value: defaultValue,
      reason: 'ERROR',
      errorCode: TYPE_MISMATCH,
      errorMessage: `Flag '${flagKey}' is a boolean; use getBooleanValue()`,
    };
  }
}

/**
 * The OpenFeature evaluation context of a request, as `req.features` sees it: `targetingKey` (the
 * user id), `plan` (`req.user.plan`, else `req.auth.tier`), `tenant`, `country`, `beta`, `route`
 * (the full path) and `ip`.
 */
export function contextFromRequest(req: Request): EvaluationContext {
  const ctx: EvaluationContext = {};
  const user = req.user;
  const id = user?.id as unknown;
  if (typeof id === 'string' || typeof id === 'number') ctx.targetingKey = String(id);
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
  if (typeof key === 'string' && key !== '') s.userId = key;
  if (typeof context.plan === 'string') s.plan = context.plan;
  if (typeof context.tenant === 'string') s.tenant = context.tenant;
  if (typeof context.country === 'string') s.country = context.country.toUpperCase();
  if (context.beta === true || context.beta === 'true') s.beta = true;
  const route = context.route ?? context.path;
  if (typeof route === 'string') s.path = route;
  if (typeof context.ip === 'string') s.ip = context.ip;
  return s;
}

function notFound<T>(flagKey: string, defaultValue: T): ResolutionDetails<T> {
  return { value: defaultValue, reason: 'ERROR', errorCode: FLAG_NOT_FOUND, errorMessage: `No flag named '${flagKey}'` };
}

interface SdkValues {
  OpenFeatureEventEmitter: new () => { emit(event: string, details?: unknown): void };
  ProviderEvents: { ConfigurationChanged: string };
}

function loadSdk(): SdkValues | undefined {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- optional peer dependency, loaded only when a provider is built
    return require('@openfeature/server-sdk') as SdkValues;
  } catch {
    return undefined;
  }
}
