import { ConfigError } from './errors';
import { checkOptions } from './options';
import { describe, parseDuration } from './units';

/** Options of `metrics({ analytics })`: the in-process per-endpoint view read by `metrics.analytics()`. */
export interface AnalyticsOptions {
  /** Span a report covers, as a duration ('15m', '1h') or milliseconds. Defaults to '15m'. */
  window?: number | string;
  /** Time buckets the window is cut into: data ages out one bucket (window / buckets) at a time. Defaults to 15. */
  buckets?: number;
  /** Most endpoints (method + route template) tracked one by one; the rest are counted as '#other'. Defaults to 1000. */
  maxEndpoints?: number;
  /** Endpoints per list of a report, when `analytics()` is called without one and at `path`. Defaults to 10. */
  limit?: number;
  /** Path the report is served at as JSON (GET, HEAD), behind the same `token` and `allow` as the metrics. Defaults to '/metrics/analytics' when `serve` is true. */
  path?: string;
  /** Serve the report at `path`. Defaults to true when `path` is set, else false. */
  serve?: boolean;
  /** Clock in epoch milliseconds, for tests. Defaults to the wall clock. */
  now?: () => number;
}

/** {@link AnalyticsOptions}, checked: what metrics() needs at setup. */
export interface ParsedAnalyticsOptions {
  settings: AnalyticsSettings;
  limit: number;
  /** Where the report is served; undefined when it is not. */
  path: string | undefined;
}

const ANALYTICS_KEYS = ['window', 'buckets', 'maxEndpoints', 'limit', 'path', 'serve', 'now'] as const;
// A slot per bucket per endpoint: past this, memory grows faster than the detail helps.
const MAX_BUCKETS = 240;
const MAX_ENDPOINTS = 100_000;

/** Checks `metrics.analytics` at setup; undefined when it is `false` (nothing is recorded). */
export function parseAnalyticsOptions(value: AnalyticsOptions | boolean | undefined): ParsedAnalyticsOptions | undefined {
  if (value === false) return undefined;
  if (value !== undefined && value !== true && (typeof value !== 'object' || value === null || Array.isArray(value))) {
    throw new ConfigError('metrics.analytics', `expected an options object like { window: '15m' }, true or false, got ${describe(value)}`);
  }
  const o = checkOptions('metrics.analytics', value === true || value === undefined ? {} : value, ANALYTICS_KEYS);
  const windowMs = parseDuration(o.window ?? '15m', 'metrics.analytics.window');
  const buckets = o.buckets ?? 15;
  if (typeof buckets !== 'number' || !Number.isInteger(buckets) || buckets < 1 || buckets > MAX_BUCKETS) {
    throw new ConfigError(
      'metrics.analytics.buckets',
      `expected a whole number from 1 to ${MAX_BUCKETS}, like 15, got ${describe(buckets)}`,
    );
  }
  if (windowMs / buckets < 1000) {
    throw new ConfigError(
      'metrics.analytics.window',
      `expected at least one second per bucket, got ${describe(o.window)} in ${buckets} buckets; lengthen the window or use fewer buckets`,
    );
  }
  const maxEndpoints = o.maxEndpoints ?? 1000;
  if (typeof maxEndpoints !== 'number' || !Number.isInteger(maxEndpoints) || maxEndpoints < 1 || maxEndpoints > MAX_ENDPOINTS) {
    throw new ConfigError(
      'metrics.analytics.maxEndpoints',
      `expected a whole number from 1 to ${MAX_ENDPOINTS}, like 1000, got ${describe(maxEndpoints)}`,
    );
  }
  const limit = checkLimit(o.limit ?? 10, 'metrics.analytics.limit');
  if (o.serve !== undefined && typeof o.serve !== 'boolean') {
    throw new ConfigError('metrics.analytics.serve', `expected true or false, got ${describe(o.serve)}`);
  }
  if (o.serve === false && o.path !== undefined) {
    throw new ConfigError(
      'metrics.analytics.serve',
      `is false while path is ${describe(o.path)}; drop path, or serve: false to keep the report off HTTP`,
    );
  }
  const path = (o.serve ?? o.path !== undefined) ? checkPath(o.path ?? '/metrics/analytics') : undefined;
  const now = o.now;
  if (now !== undefined && typeof now !== 'function') {
    throw new ConfigError(
      'metrics.analytics.now',
      `expected a function returning epoch milliseconds, like () => Date.now(), got ${describe(now)}`,
    );
  }
  return { settings: { windowMs, buckets, maxEndpoints, now }, limit, path };
}

function checkPath(path: unknown): string {
  if (typeof path !== 'string' || !path.startsWith('/') || /[?#\s]/.test(path)) {
    throw new ConfigError('metrics.analytics.path', `expected a path starting with '/' like '/metrics/analytics', got ${describe(path)}`);
  }
  return path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
}

/** Sizing of an {@link Analytics}, decided at setup. */
export interface AnalyticsSettings {
  /** Length of the window a report covers, in milliseconds. */
  windowMs: number;
  /** Time buckets the window is cut into; a report covers the last `buckets` of them, so data ages out one bucket at a time. */
  buckets: number;
  /** Most endpoints tracked one by one; later ones are counted together as `#other`. */
  maxEndpoints: number;
  /** Clock in epoch milliseconds, for tests; undefined for the wall clock. */
  now: (() => number) | undefined;
}

/** One endpoint of {@link AnalyticsReport.top}. */
export interface AnalyticsTopEntry {
  /** `METHOD route-template`, e.g. `GET /games/:id` (`#other` past the endpoint cap). */
  endpoint: string;
  method: string;
  route: string;
  /** Requests answered in the window. */
  count: number;
}

/** One endpoint of {@link AnalyticsReport.slowest}; percentiles are within 1.6 % of the exact ones. */
export interface AnalyticsLatencyEntry {
  endpoint: string;
  p50_ms: number;
  p95_ms: number;
  p99_ms: number;
  count: number;
}

/** One endpoint of {@link AnalyticsReport.error_rates}. */
export interface AnalyticsErrorEntry {
  endpoint: string;
  count: number;
  /** Responses with a 5xx status. */
  errors_5xx: number;
  /** Responses with a 4xx status (499 included: the client hung up). */
  errors_4xx: number;
  /** errors_5xx / count. */
  error_rate: number;
  /** errors_4xx / count. */
  client_error_rate: number;
}

/** What `metrics.analytics()` returns: the in-process view of the last `window`. */
export interface AnalyticsReport {
  /** The span the figures cover: from the start of the oldest bucket kept (or from when analytics started, if later) to now. */
  window: { from: string; to: string; seconds: number };
  /** `errors` are 5xx responses; `error_rate` is errors / requests. */
  totals: { requests: number; errors: number; errors_4xx: number; error_rate: number };
  /** Endpoints by request count, busiest first. */
  top: AnalyticsTopEntry[];
  /** Endpoints by p95 latency, slowest first. */
  slowest: AnalyticsLatencyEntry[];
  /** Endpoints that answered at least one 4xx or 5xx, by 5xx rate, then 4xx rate, then count. */
  error_rates: AnalyticsErrorEntry[];
}

/** The endpoint label of requests past the endpoint cap. */
export const OTHER_ENDPOINT = '#other';

// Log-linear (HDR-style) latency bins over integer microseconds: 0–31 µs one bin per µs, then each
// octave [2^e, 2^(e+1)) cut into 32 equal bins. A bin is at most 1/32 of its lower bound wide, so
// its midpoint is within 1/64 (1.6 %) of any value in it, from 32 µs up to 35 minutes, and the bin
// index is two shifts and a clz32 — no Math.log on the request path. One page of 32 counters per
// octave, allocated on first use, keeps an endpoint whose latencies span 1 ms–1 s to about 11 pages.
const SUB_BITS = 5;
const SUB = 1 << SUB_BITS;
const PAGES = 27;
const MAX_US = 2 ** 31 - 1;
/** Largest relative error of a reported percentile against the exact sample percentile. */
export const PERCENTILE_RELATIVE_ERROR = 1 / (2 * SUB);

/** The bin of a latency in microseconds, as page * 32 + offset. */
export function latencyBin(us: number): number {
  if (!(us > 0)) return 0;
  const v = us >= MAX_US ? MAX_US : us >>> 0;
  if (v < SUB) return v;
  const shift = 31 - Math.clz32(v) - SUB_BITS;
  return ((shift + 1) << SUB_BITS) | ((v >>> shift) & (SUB - 1));
}

/** The value (µs) a bin reports: its midpoint. */
export function binMidpoint(bin: number): number {
  const page = bin >>> SUB_BITS;
  const offset = bin & (SUB - 1);
  if (page === 0) return offset + 0.5;
  // Multiplications, not shifts: the top octaves overflow 32-bit shifts.
  const width = 2 ** (page - 1);
  return (SUB + offset) * width + width / 2;
}

/** One time bucket of one endpoint. */
class Slot {
  epoch = -1;
  count = 0;
  errors4xx = 0;
  errors5xx = 0;
  readonly pages: Array<Uint32Array | undefined> = [];

  /** Reused for a newer bucket: zeroed in place, so a steady endpoint allocates nothing. */
  reset(epoch: number): void {
    this.epoch = epoch;
    this.count = 0;
    this.errors4xx = 0;
    this.errors5xx = 0;
    for (const page of this.pages) page?.fill(0);
  }
}

/** An endpoint's ring of time buckets. Obtained once per (method, route) from {@link Analytics.endpoint}. */
export class Endpoint {
  readonly slots: Slot[];

  constructor(
    readonly method: string,
    readonly route: string,
    readonly label: string,
    buckets: number,
  ) {
    this.slots = Array.from({ length: buckets }, () => new Slot());
  }
}

/**
 * Per-endpoint request counts, 4xx/5xx counts and latency histograms over a sliding window, in
 * process memory. Bounded: at most `maxEndpoints` endpoints (plus `#other`), each with `buckets`
 * slots of at most 27 pages of 32 counters.
 */
export class Analytics {
  readonly windowMs: number;
  private readonly bucketMs: number;
  private readonly buckets: number;
  private readonly maxEndpoints: number;
  private readonly injectedNow: (() => number) | undefined;
  // Epoch ms at performance.now() === 0: a request's bucket comes from the performance.now() the
  // caller read for its duration anyway, so recording reads no clock. Re-anchored on each report,
  // so the monotonic clock never drifts far from the wall clock the report shows.
  private origin: number;
  private readonly startedAt: number;
  // route → method → endpoint: both keys are strings the caller already has, so no key is built.
  private readonly byRoute = new Map<string, Map<string, Endpoint>>();
  private readonly all: Endpoint[] = [];
  private readonly other: Endpoint;

  constructor(settings: AnalyticsSettings) {
    this.windowMs = settings.windowMs;
    this.buckets = settings.buckets;
    this.bucketMs = settings.windowMs / settings.buckets;
    this.maxEndpoints = settings.maxEndpoints;
    this.injectedNow = settings.now;
    this.origin = Date.now() - performance.now();
    this.startedAt = this.now();
    this.other = new Endpoint('*', OTHER_ENDPOINT, OTHER_ENDPOINT, this.buckets);
  }

  /** The endpoint `METHOD route`, or `#other` once `maxEndpoints` are tracked. Callers cache the result. */
  endpoint(method: string, route: string): Endpoint {
    let byMethod = this.byRoute.get(route);
    const known = byMethod?.get(method);
    if (known !== undefined) return known;
    // Past the cap nothing is remembered, so an app that mints endpoints cannot grow this map.
    if (this.all.length >= this.maxEndpoints) return this.other;
    const created = new Endpoint(method, route, `${method} ${route}`, this.buckets);
    if (byMethod === undefined) this.byRoute.set(route, (byMethod = new Map()));
    byMethod.set(method, created);
    this.all.push(created);
    return created;
  }

  /**
   * Counts one response of `endpoint`: its status, its duration in seconds and `at`, the
   * `performance.now()` of its end (ignored when a clock was injected).
   */
  record(endpoint: Endpoint, status: number, seconds: number, at: number = performance.now()): void {
    const epoch = Math.floor((this.injectedNow === undefined ? this.origin + at : this.injectedNow()) / this.bucketMs);
    const index = epoch % this.buckets;
    // An injected clock may start before 1970; a negative index would throw inside on-finished.
    const slot = endpoint.slots[index < 0 ? index + this.buckets : index];
    if (slot.epoch !== epoch) slot.reset(epoch);
    slot.count++;
    if (status >= 500) slot.errors5xx++;
    else if (status >= 400) slot.errors4xx++;
    const bin = latencyBin(seconds * 1e6);
    const pageIndex = bin >>> SUB_BITS;
    const page = slot.pages[pageIndex] ?? (slot.pages[pageIndex] = new Uint32Array(SUB));
    page[bin & (SUB - 1)]++;
  }

  private now(): number {
    return this.injectedNow === undefined ? this.origin + performance.now() : this.injectedNow();
  }

  /** The report of the current window, with `limit` endpoints per list. */
  report(limit: number): AnalyticsReport {
    if (this.injectedNow === undefined) this.origin = Date.now() - performance.now();
    const to = this.now();
    const current = Math.floor(to / this.bucketMs);
    const oldest = current - this.buckets + 1;
    const from = Math.max(oldest * this.bucketMs, Math.min(this.startedAt, to));

    const rows: Row[] = [];
    let requests = 0;
    let errors = 0;
    let errors4xx = 0;
    // One merge buffer for every endpoint: a report at the cap would otherwise allocate 7 MB.
    const scratch = new Float64Array(PAGES * SUB);
    for (const endpoint of [...this.all, this.other]) {
      const row = summarize(endpoint, oldest, current, scratch);
      if (row === undefined) continue;
      rows.push(row);
      requests += row.count;
      errors += row.errors5xx;
      errors4xx += row.errors4xx;
    }

    const top = [...rows].sort((a, b) => b.count - a.count || byLabel(a, b)).slice(0, limit);
    const slowest = [...rows].sort((a, b) => b.p[1] - a.p[1] || b.count - a.count || byLabel(a, b)).slice(0, limit);
    const failing = rows
      .filter((row) => row.errors5xx + row.errors4xx > 0)
      .sort(
        (a, b) =>
          b.errors5xx / b.count - a.errors5xx / a.count ||
          b.errors4xx / b.count - a.errors4xx / a.count ||
          b.count - a.count ||
          byLabel(a, b),
      )
      .slice(0, limit);

    return {
      window: { from: new Date(from).toISOString(), to: new Date(to).toISOString(), seconds: round((to - from) / 1000, 3) },
      totals: { requests, errors, errors_4xx: errors4xx, error_rate: ratio(errors, requests) },
      top: top.map((row) => ({ endpoint: row.endpoint.label, method: row.endpoint.method, route: row.endpoint.route, count: row.count })),
      slowest: slowest.map((row) => ({
        endpoint: row.endpoint.label,
        p50_ms: round(row.p[0] / 1000, 3),
        p95_ms: round(row.p[1] / 1000, 3),
        p99_ms: round(row.p[2] / 1000, 3),
        count: row.count,
      })),
      error_rates: failing.map((row) => ({
        endpoint: row.endpoint.label,
        count: row.count,
        errors_5xx: row.errors5xx,
        errors_4xx: row.errors4xx,
        error_rate: ratio(row.errors5xx, row.count),
        client_error_rate: ratio(row.errors4xx, row.count),
      })),
    };
  }
}

/** An endpoint's buckets of the window, merged. */
interface Row {
  endpoint: Endpoint;
  count: number;
  errors4xx: number;
  errors5xx: number;
  /** p50, p95, p99 in µs. */
  p: [number, number, number];
}

/** Merges the window's slots of `endpoint` in `scratch` and reads its percentiles; undefined when it had no request. */
function summarize(endpoint: Endpoint, oldest: number, current: number, scratch: Float64Array): Row | undefined {
  let count = 0;
  let errors4xx = 0;
  let errors5xx = 0;
  let pages = 0;
  for (const slot of endpoint.slots) {
    // A slot last written before the window (or, after the clock stepped back, after it) is stale.
    if (slot.epoch < oldest || slot.epoch > current || slot.count === 0) continue;
    if (count === 0) scratch.fill(0);
    count += slot.count;
    errors4xx += slot.errors4xx;
    errors5xx += slot.errors5xx;
    pages = Math.max(pages, slot.pages.length);
    for (let p = 0; p < slot.pages.length; p++) {
      const page = slot.pages[p];
      if (page === undefined) continue;
      const base = p * SUB;
      for (let i = 0; i < SUB; i++) scratch[base + i] += page[i];
    }
  }
  return count === 0 ? undefined : { endpoint, count, errors4xx, errors5xx, p: percentiles(scratch, pages * SUB, count) };
}

const QUANTILES = [0.5, 0.95, 0.99] as const;

/** p50, p95, p99 in µs by nearest rank: the smallest bin holding at least q of the samples. */
function percentiles(bins: Float64Array, length: number, count: number): [number, number, number] {
  const out: [number, number, number] = [0, 0, 0];
  let q = 0;
  let rank = Math.max(1, Math.ceil(QUANTILES[0] * count));
  let seen = 0;
  for (let bin = 0; bin < length && q < QUANTILES.length; bin++) {
    seen += bins[bin];
    while (q < QUANTILES.length && seen >= rank) {
      out[q] = binMidpoint(bin);
      q++;
      if (q < QUANTILES.length) rank = Math.max(1, Math.ceil(QUANTILES[q] * count));
    }
  }
  return out;
}

function byLabel(a: Row, b: Row): number {
  return a.endpoint.label < b.endpoint.label ? -1 : a.endpoint.label > b.endpoint.label ? 1 : 0;
}

function ratio(part: number, whole: number): number {
  return whole === 0 ? 0 : round(part / whole, 4);
}

function round(value: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}

/** Checks a report `limit`: a whole number from 1 to 1000. */
export function checkLimit(limit: unknown, option: string): number {
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > 1000) {
    throw new ConfigError(option, `expected a whole number of endpoints from 1 to 1000, like 10, got ${describe(limit)}`);
  }
  return limit;
}
