import fc from 'fast-check';
import { DETECTORS } from '../lib/sanitize';
import { decodeOnce } from '../lib/sanitize/decode';
import type { StringDetector } from '../lib/sanitize/types';
import { MAX_ROUNDS, RejudgeAllowance, settle, type CategoryCheck } from '../lib/sanitize/walker';

// What sanitize's work on hostile input is bounded by, counted rather than timed: the decoder
// reads each escape once and agrees with the one-pattern definition of a single decoding layer,
// and judging a value again after a strip stays within the rounds and the request's allowance.

/** The single decoding layer as one pattern: what decodeOnce must do, one pass or not. */
const NAMED: Record<string, string> = {
  lt: '<', gt: '>', quot: '"', apos: "'", amp: '&', colon: ':', semi: ';', comma: ',', period: '.', sol: '/',
  bsol: '\\', lpar: '(', rpar: ')', equals: '=', grave: '`', num: '#', excl: '!', dollar: '$', verbar: '|',
  vert: '|', lsqb: '[', rsqb: ']', lbrack: '[', rbrack: ']', lcub: '{', rcub: '}', tab: '\t', newline: '\n',
  nbsp: '\u00a0', plus: '+', percnt: '%', ast: '*', quest: '?', commat: '@', lowbar: '_', hyphen: '-', dash: '-',
};
const ENCODED = /%([0-9a-f]{2})|%u([0-9a-f]{4})|&#x0*([0-9a-f]{1,6});?|&#0*(\d{1,7});?|&([a-z]{2,8});/gi;
function decodeByPattern(s: string): string {
  return s.replace(ENCODED, (whole: string, pct?: string, uni?: string, hex?: string, dec?: string, name?: string) => {
    if (pct !== undefined) return String.fromCharCode(parseInt(pct, 16));
    if (uni !== undefined) return String.fromCharCode(parseInt(uni, 16));
    const code = hex !== undefined ? parseInt(hex, 16) : dec !== undefined ? parseInt(dec, 10) : -1;
    if (code >= 0) return code <= 0x10ffff ? String.fromCodePoint(code) : whole;
    return NAMED[(name as string).toLowerCase()] ?? whole;
  });
}

const FRAGMENTS = [
  '%', '&', '#', 'x', 'X', 'u', 'U', '0', '1', '9', 'a', 'F', 'g', ';', 'lt', 'LT', 'amp', 'quot', 'abcdefghi', 'nbsp',
  '2e', 'c0', 'ffff', '10ffff', '110000', ' ', 'é', '😀', '\ud800', '&#x1F600;', '%uD83D%uDE00', 'plain text of some length',
];

/** Detectors that add the length of every string they are asked about to `read.chars`. */
function counting(checks: CategoryCheck[], read: { chars: number }): CategoryCheck[] {
  return checks.map(({ detector, action }) => {
    const counted: StringDetector = {
      ...detector,
      detect(s) {
        read.chars += s.length;
        return detector.detect(s);
      },
    };
    return { detector: counted, action };
  });
}

/** A check that fires on nothing and adds the length of every value judged to `read.chars`. */
function probeOf(read: { chars: number }): CategoryCheck {
  const detector: StringDetector = {
    category: 'xss',
    trigger: /(?:)/,
    triggerSpec: { chars: '' },
    patterns: [],
    detect(s) {
      read.chars += s.length;
      return false;
    },
    strip: (s) => s,
  };
  return { detector, action: 'report' };
}

const ALL_STRIP: CategoryCheck[] = Object.values(DETECTORS).map((detector) => ({ detector, action: 'strip' }));

describe('sanitize cost', () => {
  it('decodes one layer exactly as the single-pattern definition does, in short and long values (#11)', () => {
    const fragments = fc.array(fc.constantFrom(...FRAGMENTS), { minLength: 1, maxLength: 30 });
    fc.assert(
      fc.property(fragments, (parts) => {
        const s = parts.join('');
        expect(decodeOnce(s)).toBe(decodeByPattern(s));
      }),
      { numRuns: 2000 },
    );
    // Long values take the buffered path.
    fc.assert(
      fc.property(fragments, fc.integer({ min: 1, max: 400 }), (parts, times) => {
        const s = parts.join('').repeat(times);
        expect(decodeOnce(s)).toBe(decodeByPattern(s));
      }),
      { numRuns: 100 },
    );
  });

  it('returns a value without escapes as it is, and never makes a value longer', () => {
    const plain = 'O\u2019Brien & co; 100% sure';
    expect(decodeOnce(plain)).toBe(plain);
    for (const s of ['&#x10FFFF;', '&#1114111', '%uFFFF', '&lt;'.repeat(5000), '%c0%ae'.repeat(3000)]) {
      expect(decodeOnce(s).length).toBeLessThanOrEqual(s.length);
    }
  });

  it('judges a value again after each strip, at most MAX_ROUNDS times, then drops it (#11)', () => {
    const read = { chars: 0 };
    const checks = counting(ALL_STRIP, read);
    // Each path-traversal strip joins the dots and slashes around the removed ../ into another.
    const nested = `${'.'.repeat(200)}${'/'.repeat(100)}`;
    const settled = settle(checks, nested, () => undefined);
    expect(settled).toEqual({ value: '', dropped: true, rounds: MAX_ROUNDS });
    // Each judgment reads the value at most twice per category (as sent, and decoded once).
    expect(read.chars).toBeLessThanOrEqual(MAX_ROUNDS * 2 * checks.length * nested.length);
  });

  it('a command-injection strip that exposes another separator at each cut costs rounds, not a rescan per cut (#11)', () => {
    const read = { chars: 0 };
    const chain = `${'<(id '.repeat(2000)}<(id)`;
    const settled = settle(counting([{ detector: DETECTORS.commandInjection, action: 'strip' }], read), chain, () => undefined);
    expect(settled.dropped).toBe(true);
    expect(settled.rounds).toBeLessThanOrEqual(MAX_ROUNDS);
    expect(read.chars).toBeLessThanOrEqual(MAX_ROUNDS * 2 * chain.length);
  });

  it('caps what a request spends judging values again at a share of its input plus a floor, however many values need it (#11)', () => {
    // Values that each need every round they can get.
    const value = `${'.'.repeat(80)}${'/'.repeat(40)}`;
    const values = Array.from({ length: 200 }, () => value);
    const judged = (allowance: RejudgeAllowance) => {
      const probe = { chars: 0 };
      const outcomes = values.map((v) => settle([...ALL_STRIP, probeOf(probe)], v, () => undefined, allowance));
      expect(outcomes.every((o) => o.value === '' && o.dropped)).toBe(true);
      return probe.chars;
    };
    const floor = 1000;
    const input = values.length * value.length;
    const cap = (1 + RejudgeAllowance.RATIO) * input + floor;
    expect(judged(new RejudgeAllowance(floor))).toBeLessThanOrEqual(cap);
    // Uncapped, the same values are judged far more.
    expect(judged(new RejudgeAllowance(Infinity))).toBeGreaterThan(2 * cap);
  });

  it('keeps cleaning values of ordinary size with the allowance of a fresh request', () => {
    const settled = settle(ALL_STRIP, 'Hello <scr../ipt>alert(1)</scr../ipt> world', () => undefined);
    expect(settled).toEqual({ value: 'Hello  world', dropped: false, rounds: 3 });
  });
});
