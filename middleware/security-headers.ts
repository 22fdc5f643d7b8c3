import type { ServerResponse } from 'node:http';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import helmet, { type HelmetOptions } from 'helmet';
import { defineOptions, passThrough } from '../lib/options';
import type { StackHandler } from '../lib/stack-entries';
import type { PerimeterHandler } from '../types/express-augment';

/** Options of {@link securityHeaders}: helmet's options, merged over the API defaults. */
export type SecurityHeadersOptions = HelmetOptions;

// Defaults for a JSON API: no content may load or frame, no referrer leaks, HSTS for a year, and
// Cross-Origin-Resource-Policy so other sites cannot embed the JSON. Headers that only mean
// something for HTML documents (COOP, Origin-Agent-Cluster, X-DNS-Prefetch-Control,
// X-Download-Options, X-Permitted-Cross-Domain-Policies, X-XSS-Protection) are left out: they
// would add ~180 bytes to every API response for nothing. Any of them can be turned back on.
const API_DEFAULTS: HelmetOptions = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
  frameguard: { action: 'deny' },
  strictTransportSecurity: { maxAge: 31536000, includeSubDomains: true, preload: false },
  referrerPolicy: { policy: 'no-referrer' },
  xPoweredBy: true,
  crossOriginEmbedderPolicy: false,
  crossOriginOpenerPolicy: false,
  originAgentCluster: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false,
};

// helmet's own options, old names and new; helmet checks their values. The table has exactly the
// keys of helmet's type, so a helmet upgrade that adds one fails to compile here until it is listed.
const helmetOption = passThrough<unknown>("helmet's option of that name: true, false or its settings");
const parseOptions = defineOptions<SecurityHeadersOptions>()('securityHeaders', {
  contentSecurityPolicy: helmetOption,
  crossOriginEmbedderPolicy: helmetOption,
  crossOriginOpenerPolicy: helmetOption,
  crossOriginResourcePolicy: helmetOption,
  originAgentCluster: helmetOption,
  referrerPolicy: helmetOption,
  strictTransportSecurity: helmetOption,
  hsts: helmetOption,
  xContentTypeOptions: helmetOption,
  noSniff: helmetOption,
  xDnsPrefetchControl: helmetOption,
  dnsPrefetchControl: helmetOption,
  xDownloadOptions: helmetOption,
  ieNoOpen: helmetOption,
  xFrameOptions: helmetOption,
  frameguard: helmetOption,
  xPermittedCrossDomainPolicies: helmetOption,
  permittedCrossDomainPolicies: helmetOption,
  xPoweredBy: helmetOption,
  hidePoweredBy: helmetOption,
  xXssProtection: helmetOption,
  xssFilter: helmetOption,
});

/**
 * helmet with defaults for APIs: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
 * `Strict-Transport-Security: max-age=31536000; includeSubDomains`,
 * CSP `default-src 'none'; frame-ancestors 'none'`, `Referrer-Policy: no-referrer`, no `X-Powered-By`.
 */
export function securityHeaders(options?: SecurityHeadersOptions): PerimeterHandler;
export function securityHeaders(options: SecurityHeadersOptions = {}): RequestHandler {
  const setHeaders = securityHeaderSetter(options);
  return function securityHeadersMiddleware(_req, res, next) {
    setHeaders(res);
    next();
  };
}

/**
 * securityHeaders as createStack places it: the stack sets the headers as a request enters it
 * (`onEntry`), so the answers of the middleware before this place (metrics' `/metrics` and its
 * refusals, health's probes, an error of requestId) carry them too; at its place it passes on.
 */
export function stackSecurityHeaders(options: SecurityHeadersOptions = {}): StackHandler {
  return Object.assign(function securityHeadersInStack(_req: Request, _res: Response, next: NextFunction) {
    next();
  }, { onEntry: securityHeaderSetter(options) });
}

/** Checks the options and returns what each response gets: helmet's headers, computed once, and no X-Powered-By. */
function securityHeaderSetter(options: SecurityHeadersOptions): (res: ServerResponse) => void {
  parseOptions(options);
  // helmet rejects an option given under both its old and new name; a user's old name wins.
  const o = options as Record<string, unknown>;
  const m: Record<string, unknown> = { ...API_DEFAULTS, ...o };
  if ('hsts' in o) delete m.strictTransportSecurity;
  if ('frameguard' in o) delete m.xFrameOptions;
  if ('xFrameOptions' in o) delete m.frameguard;
  if ('hidePoweredBy' in o) delete m.xPoweredBy;
  // helmet's headers are the same on every response, so they are computed once here and each
  // request only copies them.
  const headers = collectHeaders(helmet(m as HelmetOptions));
  return function setSecurityHeaders(res) {
    for (let i = 0; i < headers.length; i++) res.setHeader(headers[i][0], headers[i][1]);
    res.removeHeader('X-Powered-By');
  };
}

function collectHeaders(handler: ReturnType<typeof helmet>): Array<[string, string]> {
  const set: Array<[string, string]> = [];
  const fakeRes = {
    setHeader(name: string, value: string) {
      set.push([name, String(value)]);
    },
    removeHeader() {},
  };
  let failed: unknown;
  handler({} as never, fakeRes as never, (err?: unknown) => {
    failed = err;
  });
  if (failed) throw failed;
  return set;
}
