import { BadRequestError } from '../errors';
import { allowChild, type AllowList, type AllowNode } from './allow';
import { decodeOnce, mayBeEncoded } from './decode';
import { isOperatorKey } from './nosql';
import type { Action, Category, StringDetector } from './types';

/** One enabled string category and what to do on a hit. */
export interface CategoryCheck {
  detector: StringDetector;
  action: Action;
}

/** Everything a walk needs, compiled once by the factory. */
export interface WalkConfig {
  /** String checks, in the order they run. */
  checks: readonly CategoryCheck[];
  /** Union of the checks' triggers: a string with none of these characters is skipped at once. */
  trigger: RegExp | undefined;
  /** What to do with `$`-operator and dotted keys (the nosql mode), or false. */
  operatorKeys: Action | false;
  allow: AllowList;
  maxDepth: number;
  maxKeys: number;
}

/** A detection: where, which category, and what was done. `field` never carries the value. */
export interface Finding {
  field: string;
  category: Category | 'prototypePollution';
  action: Action;
}

/** Keys that reach Object.prototype when assigned or merged: dropped at any depth, always. */
const POLLUTING = new Set(['__proto__', 'constructor', 'prototype']);

/** The outcome of one request's walk, for logs and metrics. */
export class Walk {
  /** Keys and array items seen so far, over every source of the request. */
  private keys = 0;
  private readonly path: Array<string | number> = [];
  /** Detections in order; undefined while there are none (the common case allocates nothing). */
  findings: Finding[] | undefined;

  constructor(private readonly cfg: WalkConfig) {}

  /** `value` (the request's `source`) cleaned: the same reference when nothing changed. Throws a BadRequestError to reject. */
  source(source: 'query' | 'body' | 'params', value: unknown): unknown {
    this.path.length = 0;
    this.path.push(source);
    const node = allowChild(this.cfg.allow.root, source);
    return this.value(value, 1, node, node?.terminal === true);
  }

  private value(value: unknown, depth: number, node: AllowNode | undefined, raw: boolean): unknown {
    if (typeof value === 'string') return raw ? value : this.string(value);
    if (value === null || typeof value !== 'object') return value;
    if (depth > this.cfg.maxDepth) throw tooComplex('maxDepth', this.cfg.maxDepth);
    if (Array.isArray(value)) return this.array(value, depth, node, raw);
    const proto = Object.getPrototypeOf(value) as object | null;
    // A prototype with no constructor of its own is a plain object that `__proto__` in the
    // input installed (qs with allowPrototypes does this): rebuild the object without it.
    const polluted = proto !== Object.prototype && proto !== null && !Object.prototype.hasOwnProperty.call(proto, 'constructor');
    if (proto !== Object.prototype && proto !== null && !polluted) return value; // Buffer, Date, class instances
    return this.object(value as Record<string, unknown>, depth, node, raw, polluted);
  }

  private array(arr: unknown[], depth: number, node: AllowNode | undefined, raw: boolean): unknown[] {
    let out: unknown[] | undefined = Object.getPrototypeOf(arr) === Array.prototype ? undefined : [];
    for (let i = 0; i < arr.length; i++) {
      if (++this.keys > this.cfg.maxKeys) throw tooComplex('maxKeys', this.cfg.maxKeys);
      this.path.push(i);
      // Indices are not path segments for `allow`: 'body.tags' covers every tag.
      const item = arr[i];
      const cleaned = this.value(item, depth + 1, node, raw);
      this.path.pop();
      if (cleaned !== item && out === undefined) out = arr.slice(0, i);
      if (out !== undefined) out.push(cleaned);
    }
    return out ?? arr;
  }

  private object(obj: Record<string, unknown>, depth: number, node: AllowNode | undefined, raw: boolean, polluted: boolean): object {
    const keys = Object.keys(obj);
    let out: Record<string, unknown> | undefined = polluted ? {} : undefined;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      if (++this.keys > this.cfg.maxKeys) throw tooComplex('maxKeys', this.cfg.maxKeys);
      this.path.push(key);
      let keep = true;
      let child: AllowNode | undefined;
      let childRaw = raw;
      if (POLLUTING.has(key)) {
        keep = false;
        this.record('prototypePollution', 'strip');
      } else if (!raw) {
        child = allowChild(node, key);
        childRaw = child?.terminal === true || this.cfg.allow.names.has(key);
        if (!childRaw) keep = this.keyAllowed(key);
      }
      let cleaned: unknown;
      const item = obj[key];
      if (keep) cleaned = this.value(item, depth + 1, child, childRaw);
      this.path.pop();
      if (out === undefined && (!keep || cleaned !== item)) out = copyKeys(obj, keys, i);
      // Assigning onto a fresh {} is safe: the only inherited setter, __proto__, never gets here.
      if (out !== undefined && keep) out[key] = cleaned;
    }
    return out ?? obj;
  }

  /** Checks a key (the nosql operator rule, then the string rules); false drops it. */
  private keyAllowed(key: string): boolean {
    let keep = true;
    const operator = this.cfg.operatorKeys;
    if (operator !== false && isOperatorKey(key)) {
      if (operator === 'reject') throw this.reject('nosql');
      this.record('nosql', operator);
      if (operator === 'strip') keep = false;
    }
    const trigger = this.cfg.trigger;
    if (trigger === undefined || !trigger.test(key)) return keep;
    for (const check of this.cfg.checks) {
      if (!check.detector.trigger.test(key) || !detects(check.detector, key)) continue;
      if (check.action === 'reject') throw this.reject(check.detector.category);
      this.record(check.detector.category, check.action);
      // A key cannot be half-stripped; a key that carries an attack goes with its value.
      if (check.action === 'strip') keep = false;
    }
    return keep;
  }

  private string(s: string): string {
    const trigger = this.cfg.trigger;
    if (trigger === undefined || s.length === 0 || !trigger.test(s)) return s;
    let decoded: string | undefined;
    let strips: StringDetector[] | undefined;
    for (const check of this.cfg.checks) {
      const d = check.detector;
      if (!d.trigger.test(s)) continue;
      let hit = d.detect(s);
      if (!hit && mayBeEncoded(s)) {
        decoded ??= decodeOnce(s);
        hit = decoded !== s && d.detect(decoded);
      }
      if (!hit) continue;
      // Every category is judged on the input as sent, so a reject wins over another's strip.
      if (check.action === 'reject') throw this.reject(d.category);
      this.record(d.category, check.action);
      if (check.action === 'strip') (strips ??= []).push(d);
    }
    if (strips === undefined) return s;
    let out = s;
    for (const d of strips) out = stripFully(d, out);
    return out;
  }

  private record(category: Finding['category'], action: Action): void {
    (this.findings ??= []).push({ field: renderPath(this.path), category, action });
  }

  private reject(category: Category): BadRequestError {
    const field = renderPath(this.path);
    this.record(category, 'reject');
    return new BadRequestError('The request contains input that is not allowed.', { field, category }, 'INPUT_REJECTED');
  }
}

function detects(d: StringDetector, s: string): boolean {
  if (d.detect(s)) return true;
  if (!mayBeEncoded(s)) return false;
  const decoded = decodeOnce(s);
  return decoded !== s && d.detect(decoded);
}

/**
 * `s` stripped until the detector no longer fires, as sent or decoded once: an encoded attack is
 * stripped from its decoded form (so that value comes back decoded). Undefined when three more
 * passes do not get there.
 */
export function stripUntilClean(d: StringDetector, s: string): string | undefined {
  let out = d.strip(s);
  for (let pass = 0; pass < 3 && detects(d, out); pass++) out = d.strip(decodeOnce(out));
  return detects(d, out) ? undefined : out;
}

// What strip cannot clean is dropped whole: never pass on a value the detector still fires on.
function stripFully(d: StringDetector, s: string): string {
  return stripUntilClean(d, s) ?? '';
}

function copyKeys(obj: Record<string, unknown>, keys: string[], end: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let i = 0; i < end; i++) out[keys[i]] = obj[keys[i]];
  return out;
}

function tooComplex(limit: 'maxDepth' | 'maxKeys', max: number): BadRequestError {
  const what = limit === 'maxDepth' ? `nested more than ${max} levels deep` : `more than ${max} keys and array items`;
  return new BadRequestError(`The request input is too complex: ${what}.`, { limit, max }, 'INPUT_TOO_COMPLEX');
}

// Keys come from the client: the field name in logs and error details keeps a short, inert
// form of each, never markup or a megabyte of key.
const SAFE_SEGMENT = /^[\p{L}\p{N}_$@:-]{1,64}$/u;
const UNSAFE_CHARS = /[^\p{L}\p{N}_$@:-]/gu;

/** `['body', 'comments', 2, 'text']` → `body.comments[2].text`. */
export function renderPath(path: ReadonlyArray<string | number>): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else {
      const safe = SAFE_SEGMENT.test(segment) ? segment : segment.slice(0, 64).replace(UNSAFE_CHARS, '_');
      out += out === '' ? safe : `.${safe}`;
    }
  }
  return out;
}

/** The patterns of this module, for the linear-time test. */
export const WALKER_PATTERNS: readonly RegExp[] = [SAFE_SEGMENT, UNSAFE_CHARS];
