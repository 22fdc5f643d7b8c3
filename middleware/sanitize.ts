import type { Request, RequestHandler } from 'express';
import type { Counter } from 'prom-client';
import { ConfigError } from '../lib/errors';
import { counter } from '../lib/metrics-registry';
import { defineOptions, oneOf, option } from '../lib/options';
import { defineOwn } from '../lib/request-slots';
import { loggerOf, perRuntime } from '../lib/runtime';
import { compileAllow } from '../lib/sanitize/allow';
import { DETECTORS, detectAttacks } from '../lib/sanitize';
import { triggerPattern, type Trigger } from '../lib/sanitize/trigger';
import type { Action, Category } from '../lib/sanitize/types';
import { Walk, type CategoryCheck, type Tally, type WalkConfig } from '../lib/sanitize/walker';
import type { PerimeterHandler } from '../types/express-augment';

export { detectAttacks };
/** What `sanitize` does with a category: remove the dangerous part, answer 400, only log and count, or nothing. */
export type SanitizeAction = Action | false;
/** A category of attack `sanitize` looks for. */
export type SanitizeCategory = Category;
/** A part of the request `sanitize` covers. */
export type SanitizeSource = 'query' | 'body' | 'params';

/** Options of {@link sanitize}. */
export interface SanitizeOptions {
  /** Markup that runs script: `<script`, `<img onerror=`, `javascript:` URLs, encoded forms. Defaults to 'strip'. */
  xss?: SanitizeAction;
  /** SQL injection structure: `' OR '1'='1`, `UNION SELECT`, `; DROP TABLE`, `SLEEP(`. Defaults to 'report'. */
  sql?: SanitizeAction;
  /** MongoDB operators: keys starting with `$` or containing `.`, and `$where` payloads in strings. Defaults to 'strip'. */
  nosql?: SanitizeAction;
  /** `../` in any encoding, NUL bytes, `/etc/passwd`-style paths, `file://`. Defaults to 'report'. */
  pathTraversal?: SanitizeAction;
  /** A shell separator followed by a command: `; cat /etc/passwd`, `| nc`, `$(id)`, backticks. Defaults to 'report'. */
  commandInjection?: SanitizeAction;
  /** Fields that keep raw input: paths like 'body.markdown' (array indices skipped, `*` for any key) or bare key names matching anywhere. Defaults to []. */
  allow?: string[];
  /** Parts of the request covered; on a route behind a stack, `['params']` avoids scanning query and body twice. Defaults to ['query', 'body', 'params']. */
  sources?: SanitizeSource[];
  /** Deepest nesting of objects and arrays accepted (the top-level object is 1); deeper → 400 INPUT_TOO_COMPLEX. Defaults to 20. */
  maxDepth?: number;
  /** Most object keys plus array items accepted per request, over all sources; more → 400 INPUT_TOO_COMPLEX. Defaults to 1000. */
  maxKeys?: number;
}

const CATEGORIES = Object.keys(DETECTORS) as Category[];
const ACTIONS = ['strip', 'reject', 'report'] as const;
const SOURCES = ['query', 'body', 'params'] as const;

// Every option of sanitize() once: its default and its check (the interface's JSDoc is its doc).
const parseOptions = defineOptions<SanitizeOptions>()('sanitize', {
  xss: actionOption('strip'),
  sql: actionOption('report'),
  nosql: actionOption('strip'),
  pathTraversal: actionOption('report'),
  commandInjection: actionOption('report'),
  allow: option("field paths like ['body.markdown']", (value, path) => compileAllow(value as string[] | undefined, path), '[]'),
  sources: option("'query', 'body', 'params'", (value, path) => sourcesOf(value ?? SOURCES, path), "['query', 'body', 'params']"),
  maxDepth: limit(20, 1000),
  maxKeys: limit(1000, 10_000_000),
});
// Findings logged per request: an attacker sending a thousand bad fields gets one line per field
// only up to this, then a summary; the metric still counts each.
const MAX_LOGGED = 10;

/**
 * Cleans `req.query`, `req.body` and `req.params` of XSS, SQL, NoSQL, path-traversal and
 * command-injection payloads: per category 'strip' (remove the dangerous part), 'reject'
 * (400 INPUT_REJECTED naming the field and category, never the value) or 'report' (a warn
 * log line and `sanitize_detections_total{category,action}`, input unchanged). What a strip
 * leaves is judged again in every category until nothing strips, so no strip rebuilds a payload
 * another category refuses. Keys `__proto__`, `constructor` and `prototype` are always dropped.
 * On Express 5, `req.query` becomes an own property holding the cleaned query.
 */
export function sanitize(options?: SanitizeOptions): PerimeterHandler;
export function sanitize(options: SanitizeOptions = {}): RequestHandler {
  const o = parseOptions(options);
  const checks: CategoryCheck[] = [];
  const triggers: Trigger[] = [];
  for (const category of CATEGORIES) {
    const action = o[category];
    if (action === false) continue;
    checks.push({ detector: DETECTORS[category], action });
    triggers.push(DETECTORS[category].triggerSpec);
  }
  const cfg: WalkConfig = {
    checks,
    trigger: triggers.length === 0 ? undefined : triggerPattern(...triggers),
    operatorKeys: o.nosql,
    allow: o.allow,
    detailed: MAX_LOGGED,
    maxDepth: o.maxDepth,
    maxKeys: o.maxKeys,
  };
  const sources = o.sources;
  const doQuery = sources.includes('query');
  const doBody = sources.includes('body');
  const doParams = sources.includes('params');
  const detections = perRuntime((rt) =>
    counter(rt.registry, 'sanitize_detections_total', 'Request fields sanitize found an attack in, by category and action taken.', ['category', 'action']),
  );

  return function sanitizeMiddleware(req, _res, next) {
    const walk = new Walk(cfg);
    try {
      const query: unknown = doQuery ? req.query : undefined;
      if (query !== undefined) {
        // No query string, nothing to clean.
        const cleaned = req.url.includes('?') ? walk.source('query', query) : query;
        // Express 5's req.query is a getter on its shared request prototype: it re-parses the URL
        // on every read (the cleaning would be lost) and cannot be assigned. An own property of
        // this request holds the cleaned query and lets handlers assign it, as on Express 4.
        defineOwn(req, 'query', cleaned);
      }
      if (doBody && req.body !== undefined) {
        const body: unknown = req.body;
        const cleaned = walk.source('body', body);
        if (cleaned !== body) req.body = cleaned;
      }
      if (doParams && req.params !== undefined) {
        const params = req.params;
        const cleaned = walk.source('params', params);
        if (cleaned !== params) req.params = cleaned as typeof params;
      }
    } catch (err) {
      if (walk.tally !== undefined) report(req, walk, detections(req));
      return next(err);
    }
    if (walk.tally !== undefined) report(req, walk, detections(req));
    next();
  };
}

function report(req: Request, walk: Walk, detections: Counter<'category' | 'action'>): void {
  let unlogged = 0;
  for (const { category, action, count } of (walk.tally as Map<string, Tally>).values()) {
    detections.inc({ category, action }, count);
    if (action !== 'reject') unlogged += count;
  }
  const log = loggerOf(req);
  for (const f of walk.findings ?? []) {
    // A reject is logged by the error path with the request; strip and report are logged here.
    if (f.action === 'reject') continue;
    unlogged--;
    const fields = { field: f.field, category: f.category, action: f.action };
    if (f.action === 'report') log.warn('Suspicious input reported', fields);
    else log.info('Suspicious input stripped', fields);
  }
  if (unlogged > 0) log.warn('More suspicious input not logged', { count: unlogged });
}

function actionOption(fallback: Action) {
  return option("'strip', 'reject', 'report' or false", (given, path): SanitizeAction => {
    const value = given ?? fallback;
    if (value === false) return false;
    if (typeof value !== 'string' || !(ACTIONS as readonly string[]).includes(value)) {
      throw new ConfigError(path, `expected 'strip', 'reject', 'report' or false, got ${typeof value === 'string' ? `'${value}'` : String(value)}`);
    }
    return value as Action;
  }, `'${fallback}'`);
}

function limit(fallback: number, max: number) {
  return option(`a whole number from 1 to ${max}`, (given, path): number => {
    const value = given ?? fallback;
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
      throw new ConfigError(path, `expected a whole number from 1 to ${max}, got ${String(value)}`);
    }
    return value;
  }, String(fallback));
}

function sourcesOf(value: unknown, path: string): SanitizeSource[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new ConfigError(path, `expected a non-empty array of 'query', 'body', 'params', got ${JSON.stringify(value)}`);
  }
  return value.map((s) => oneOf(path, s, SOURCES));
}
