// "admin'--" leaves a quote open; "He said 'no' -- then left" does not. Apostrophes inside
// words (O'Brien, don't) are neither, so they are not counted.

let lastString: string | undefined;
let lastCounts: [number, number, number] = [0, 0, 0];

/** Which quotes `s` leaves open, as bits: 1 for `'`, 2 for `"`, 4 for a backtick. */
export function openQuotes(s: string): number {
  if (s !== lastString) {
    lastCounts = countQuotes(s);
    lastString = s;
  }
  return (lastCounts[0] & 1) | ((lastCounts[1] & 1) << 1) | ((lastCounts[2] & 1) << 2);
}

/** Whether `s` has an odd number of `quote` characters that are not letter-quote-letter apostrophes. */
export function hasOpenQuote(s: string, quote: string): boolean {
  if (s !== lastString) {
    lastCounts = countQuotes(s);
    lastString = s;
  }
  const n = quote === "'" ? lastCounts[0] : quote === '"' ? lastCounts[1] : lastCounts[2];
  return n % 2 === 1;
}

function countQuotes(s: string): [number, number, number] {
  const counts: [number, number, number] = [0, 0, 0];
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const slot = c === 39 ? 0 : c === 34 ? 1 : c === 96 ? 2 : -1;
    if (slot === -1) continue;
    if (slot === 0 && isLetter(s, i - 1) && isLetter(s, i + 1)) continue;
    counts[slot]++;
  }
  return counts;
}

const LETTER = /\p{L}/u;
function isLetter(s: string, i: number): boolean {
  if (i < 0 || i >= s.length) return false;
  const c = s.charCodeAt(i);
  if ((c >= 65 && c <= 90) || (c >= 97 && c <= 122)) return true;
  return c > 127 && LETTER.test(s[i]);
}

/** The patterns of this module, for the linear-time test. */
export const QUOTE_PATTERNS: readonly RegExp[] = [LETTER];
