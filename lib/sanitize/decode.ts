// Attackers hide markup and separators behind one layer of encoding (`%3Cscript`, `&#60;script`,
// `&#x6A;avascript:`, IIS `%u002e`). Detection looks at the text decoded once; one layer is what
// a browser or a careless `decodeURIComponent` in the app would undo.

const NAMED: Record<string, string> = {
  lt: '<', gt: '>', quot: '"', apos: "'", amp: '&', colon: ':', semi: ';', comma: ',', period: '.', sol: '/',
  bsol: '\\', lpar: '(', rpar: ')', equals: '=', grave: '`', num: '#', excl: '!', dollar: '$', verbar: '|',
  vert: '|', lsqb: '[', rsqb: ']', lbrack: '[', rbrack: ']', lcub: '{', rcub: '}', tab: '\t', newline: '\n',
  nbsp: '\u00a0', plus: '+', percnt: '%', ast: '*', quest: '?', commat: '@', lowbar: '_', hyphen: '-', dash: '-',
};

// Each alternative starts with a distinct literal and every quantifier is bounded or followed by a
// disjoint class, so the scan is linear.
const ENCODED = /%([0-9a-f]{2})|%u([0-9a-f]{4})|&#x0*([0-9a-f]{1,6});?|&#0*(\d{1,7});?|&([a-z]{2,8});/gi;

/** Whether `s` may carry an encoded form worth decoding. */
export function mayBeEncoded(s: string): boolean {
  return s.includes('%') || s.includes('&');
}

/** `s` with percent escapes, `%uXXXX` and HTML character references decoded once (unknown ones kept). */
export function decodeOnce(s: string): string {
  if (!mayBeEncoded(s)) return s;
  return s.replace(ENCODED, decodeMatch);
}

function decodeMatch(whole: string, pct?: string, uni?: string, hex?: string, dec?: string, name?: string): string {
  if (pct !== undefined) return String.fromCharCode(parseInt(pct, 16));
  if (uni !== undefined) return String.fromCharCode(parseInt(uni, 16));
  const code = hex !== undefined ? parseInt(hex, 16) : dec !== undefined ? parseInt(dec, 10) : -1;
  if (code >= 0) return code <= 0x10ffff ? String.fromCodePoint(code) : whole;
  return NAMED[(name as string).toLowerCase()] ?? whole;
}

/** The patterns of this module, for the linear-time test. */
export const DECODE_PATTERNS: readonly RegExp[] = [ENCODED];
