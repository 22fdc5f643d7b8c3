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
  /** Detections (other than rejects) whose field is kept for the log; the rest are only counted. */
  detailed: number;
  maxDepth: number;
  maxKeys: number;
}

/** How many detections of a category had an action. */
export interface Tally {
  category: Finding['category'];
  action: Action;
  count: number;
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
  /**
   * Detections in order, with their field: the first `cfg.detailed` that are not rejects, and a
   * reject. Undefined while there are none (the common case allocates nothing).
   */
  findings: Finding[] | undefined;
  /** Every detection, counted by category and action (a field is rendered only for `findings`). */
  tally: Map<string, Tally> | undefined;
  private detailed = 0;
  /** What judging values again after strips may still cost in this request. */
  private readonly allowance = new RejudgeAllowance();

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
    if (operator !== false && (isOperatorKey(key) || (mayBeEncoded(key) && isOperatorKey(decodeOnce(key))))) {
      if (operator === 'reject') throw this.reject('nosql');
      this.record('nosql', operator);
      if (operator === 'strip') keep = false;
    }
    const trigger = this.cfg.trigger;
    if (trigger === undefined || !trigger.test(key)) return keep;
    // A key cannot be half-stripped: one that carries an attack goes with its value, so what
    // reaches the handler is the key as sent, which every category has passed.
    const verdict = judge(this.cfg.checks, key);
    for (const hit of verdict.hits) {
      if (hit.action === 'reject') throw this.reject(hit.detector.category);
      this.record(hit.detector.category, hit.action);
      if (hit.action === 'strip') keep = false;
    }
    return keep;
  }

  /**
   * `s` cleaned to a fixed point: judged in every category, stripped, and the result judged again
   * in every category (a strip of one category can rebuild another's payload, and stripping an
   * encoded attack decodes the value), until no stripping category fires. A category in 'reject'
   * that fires at any round rejects; each category is recorded once per field.
   */
  private string(s: string): string {
    const trigger = this.cfg.trigger;
    if (trigger === undefined || s.length === 0 || !trigger.test(s)) return s;
    const settled = settle(
      this.cfg.checks,
      s,
      (hit) => {
        if (hit.action === 'reject') throw this.reject(hit.detector.category);
        this.record(hit.detector.category, hit.action);
      },
      this.allowance,
    );
    return settled.value;
  }

  private record(category: Finding['category'], action: Action): void {
    const key = `${category}/${action}`;
    const tally = (this.tally ??= new Map());
    const counted = tally.get(key);
    if (counted === undefined) tally.set(key, { category, action, count: 1 });
    else counted.count++;
    // A hostile request can carry a thousand bad keys: only the detections that will be logged
    // (and a reject, which names its field) get their field rendered.
    if (action !== 'reject') {
      if (this.detailed >= this.cfg.detailed) return;
      this.detailed++;
    }
    (this.findings ??= []).push({ field: renderPath(this.path), category, action });
  }

  private reject(category: Category): BadRequestError {
    const field = renderPath(this.path);
    this.record(category, 'reject');
    return new BadRequestError('The request contains input that is not allowed.', { field, category }, 'INPUT_REJECTED');
  }
}

/** A category that fired on a value, and whether only its decoded form carried the attack. */
export interface Hit {
  detector: StringDetector;
  action: Action;
  decoded: boolean;
}

/** The categories of `checks` that fire on `s`, as sent or decoded once, in order. */
export function judge(checks: readonly CategoryCheck[], s: string): { hits: Hit[]; decoded: string | undefined } {
  const hits: Hit[] = [];
  // Decoded once, and only when a category did not fire on the value as sent.
  let decoded: string | undefined;
  for (const check of checks) {
    const d = check.detector;
    if (!d.trigger.test(s)) continue;
    if (d.detect(s)) {
      hits.push({ detector: d, action: check.action, decoded: false });
      continue;
    }
    decoded ??= mayBeEncoded(s) ? decodeOnce(s) : s;
    if (decoded !== s && d.trigger.test(decoded) && d.detect(decoded)) hits.push({ detector: d, action: check.action, decoded: true });
  }
  return { hits, decoded: decoded === s ? undefined : decoded };
}

/**
 * Most judgments of one value. One strip removes every match of every firing category at once;
 * another round is needed only when a removal joins the pieces around it into a new match, or
 * uncovers a further layer of encoding. Each of those is a deliberate construction that
 * legitimate text never needs (it is never stripped at all), so a value still firing when the
 * rounds run out is dropped whole rather than judged again.
 */
export const MAX_ROUNDS = 4;

/**
 * What a request may spend on judging values again after a strip, in characters: a floor, plus
 * a share of every character judged the first time. The first judgment of each value is one
 * linear pass of every category; the second and later ones draw on this allowance, so a request
 * costs at most (1 + RATIO) passes over its input plus the floor, however its values nest and
 * however many of them need stripping. Strips only remove and decoding only shortens, so each
 * later judgment reads no more than the one before. A value whose next judgment the allowance
 * cannot pay for is dropped whole: a legitimate value is never stripped, so only values that
 * carry an attack are ever dropped this way, and a form field of ordinary size always fits.
 */
export class RejudgeAllowance {
  static readonly FLOOR = 64 * 1024;
  static readonly RATIO = 0.25;
  private chars: number;

  constructor(floor = RejudgeAllowance.FLOOR) {
    this.chars = floor;
  }

  /** A value of `length` characters was judged for the first time. */
  earn(length: number): void {
    this.chars += RejudgeAllowance.RATIO * length;
  }

  /** Takes `length` characters for another judgment; false (and nothing taken) when they are not there. */
  spend(length: number): boolean {
    if (length > this.chars) return false;
    this.chars -= length;
    return true;
  }
}

/** The outcome of {@link settle}: the value to pass on, and whether it had to be dropped. */
export interface Settled {
  value: string;
  /** True when the value still fired when the rounds or the allowance ran out, so `value` is ''. */
  dropped: boolean;
  /** Judgments it took (1 when nothing was stripped). */
  rounds: number;
}

/**
 * `s` judged in every category of `checks`, stripped by the categories in 'strip' that fire,
 * and judged again until none of them fires: what comes back passes every category's check
 * (a 'report' category may still fire; `onHit` hears it). `onHit` is called once per category,
 * the first time it fires, and may throw (a 'reject'). An attack found only in the decoded form
 * is stripped from the decoded text, so that value comes back decoded. Judgments after the first
 * are paid from `allowance`.
 */
export function settle(checks: readonly CategoryCheck[], s: string, onHit: (hit: Hit) => void, allowance = new RejudgeAllowance()): Settled {
  let value = s;
  allowance.earn(s.length);
  const heard = new Set<StringDetector>();
  for (let round = 1; ; round++) {
    const { hits, decoded } = judge(checks, value);
    let strips: StringDetector[] | undefined;
    let fromDecoded = false;
    for (const hit of hits) {
      if (!heard.has(hit.detector)) {
        heard.add(hit.detector);
        onHit(hit);
      }
      if (hit.action === 'strip') {
        (strips ??= []).push(hit.detector);
        fromDecoded ||= hit.decoded;
      }
    }
    if (strips === undefined) return { value, dropped: false, rounds: round };
    // Never pass on a value a stripping category still fires on: past the bounds, drop it.
    if (round === MAX_ROUNDS) return { value: '', dropped: true, rounds: round };
    let out = fromDecoded ? (decoded as string) : value;
    for (const d of strips) out = d.strip(out);
    if (out.length === 0) return { value: out, dropped: false, rounds: round };
    if (!allowance.spend(out.length)) return { value: '', dropped: true, rounds: round };
    value = out;
  }
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
