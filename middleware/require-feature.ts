import type { RequestHandler } from 'express';
import { ConfigError, NotFoundError } from '../lib/errors';
import { checkFlagName, compileFlags, type CompiledFlag, type FlagInput } from '../lib/flags/definition';
import { countryReader, DEFAULT_COUNTRY_HEADERS, RequestFeatureSet } from '../lib/flags/request-features';
import { defineOptions, passThrough, refuseRequest } from '../lib/options';
import { runtimeOf } from '../lib/runtime';
import { warnOnce } from '../lib/warnings';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link requireFeature}. */
export interface RequireFeatureOptions {
  /** Flags of this guard's own, for a route without `featureFlags` in front (`{ beta: { plans: ['pro'] } }`); when given they are used instead of `req.features`. Defaults to the request's `req.features`. */
  flags?: Record<string, FlagInput>;
}

// Said the same way whatever the reason: a disabled feature looks like a missing endpoint.
const MESSAGE = 'This endpoint is not available.';

// The option of requireFeature() once; its flags are checked as they compile (compileFlags).
const parseOptions = defineOptions<RequireFeatureOptions>()('requireFeature', {
  flags: passThrough<Record<string, FlagInput>>("flag definitions like { beta: { plans: ['pro'] } }"),
});

/**
 * 404 FEATURE_DISABLED unless the flag `name` is on for the request: read from `req.features`
 * (the `featureFlags` middleware, or the stack's), or evaluated from the guard's own `flags`.
 * Without either, every request is refused and ERR_FEATURE_WITHOUT_FLAGS is logged once.
 */
export function requireFeature(name: string, options?: RequireFeatureOptions): PerimeterHandler;
export function requireFeature(name: string, options?: RequireFeatureOptions): RequestHandler {
  refuseRequest('requireFeature', name, "requireFeature('new-ui')");
  if (typeof name === 'object' && name !== null) {
    throw new ConfigError('requireFeature', "expected the flag name first: requireFeature('new-ui') or requireFeature('new-ui', { flags })");
  }
  checkFlagName(name, 'requireFeature');
  const opts = parseOptions(options);
  let own: { flag: CompiledFlag | undefined; readCountry: ReturnType<typeof countryReader>; set: ReturnType<typeof compileFlags> } | undefined;
  if (opts.flags !== undefined) {
    const set = compileFlags(opts.flags, 'requireFeature.flags');
    const flag = set.byName.get(name);
    if (flag === undefined) {
      throw new ConfigError('requireFeature.flags', `has no flag '${name}' (it has ${set.list.map((f) => `'${f.name}'`).join(', ') || 'none'}); check the spelling`);
    }
    own = { flag, readCountry: countryReader(DEFAULT_COUNTRY_HEADERS), set };
  }

  return function requireFeatureMiddleware(req, _res, next) {
    let enabled: boolean;
    if (own !== undefined) {
      const features = new RequestFeatureSet(own.set, req, req.context?.country ?? own.readCountry(req));
      enabled = features.isEnabled(name);
    } else if (req.features !== undefined) {
      enabled = req.features.isEnabled(name);
    } else {
      warnOnce(runtimeOf(req).logger, 'ERR_FEATURE_WITHOUT_FLAGS', { feature: name, path: req.path });
      enabled = false;
    }
    if (enabled) return next();
    next(new NotFoundError(MESSAGE, undefined, 'FEATURE_DISABLED'));
  };
}
