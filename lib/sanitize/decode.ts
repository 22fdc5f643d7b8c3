// Attackers hide markup and separators behind one layer of encoding (`%3Cscript`, `&#60;script`,
// `&#x6A;avascript:`, IIS `%u002e`). Detection looks at the text decoded once; one layer is what
// a browser or a careless `decodeURIComponent` in the app would undo.
//
// The decoder is one left-to-right pass over the characters: each escape is read where it
// starts and never rescanned, and a value made only of escapes costs a small constant per
// escape (no string or object is made per escape).

const NAMED: ReadonlyArray<readonly [string, string]> = Object.entries({
  lt: '<', gt: '>', quot: '"', apos: "'", amp: '&', colon: ':', semi: ';', comma: ',', period: '.', sol: '/',
  bsol: '\\', lpar: '(', rpar: ')', equals: '=', grave: '`', num: '#', excl: '!', dollar: '$', verbar: '|',
  vert: '|', lsqb: '[', rsqb: ']', lbrack: '[', rbrack: ']', lcub: '{', rcub: '}', tab: '\t', newline: '\n',
  nbsp: '\u00a0', plus: '+', percnt: '%', ast: '*', quest: '?', commat: '@', lowbar: '_', hyphen: '-', dash: '-',
});

// The names in an open-addressing table keyed by a hash of their letters in lower case, so a
// reference is looked up as it is read, without copying its name. A slot holds index + 1.
const NAMED_SLOTS = new Uint8Array(256);
for (let index = 0; index < NAMED.length; index++) {
  let slot = hashStep(0, NAMED[index][0], 0, NAMED[index][0].length) & 255;
  while (NAMED_SLOTS[slot] !== 0) slot = (slot + 1) & 255;
  NAMED_SLOTS[slot] = index + 1;
}

function hashStep(h: number, s: string, from: number, to: number): number {
  for (let i = from; i < to; i++) h = (Math.imul(h, 31) + (s.charCodeAt(i) | 32)) | 0;
  return h;
}

/** The index in NAMED of the reference whose letters are `s[from, to)` (any case) and hash `h`, or -1. */
function namedIndex(s: string, from: number, to: number, h: number): number {
  for (let slot = h & 255; NAMED_SLOTS[slot] !== 0; slot = (slot + 1) & 255) {
    const index = NAMED_SLOTS[slot] - 1;
    const name = NAMED[index][0];
    if (name.length !== to - from) continue;
    let k = 0;
    while (k < name.length && (s.charCodeAt(from + k) | 32) === name.charCodeAt(k)) k++;
    if (k === name.length) return index;
  }
  return -1;
}

const PERCENT = 37;
const AMPERSAND = 38;
const HASH = 35;
const SEMICOLON = 59;

// Hex digit values by character code, -1 for other characters.
const HEX = new Int8Array(128).fill(-1);
for (let c = 0; c < 10; c++) HEX[48 + c] = c;
for (let c = 0; c < 6; c++) HEX[65 + c] = HEX[97 + c] = 10 + c;

function hexValue(c: number): number {
  return c < 128 ? HEX[c] : -1;
}

function isAsciiLetter(c: number): boolean {
  const lower = c | 32;
  return lower >= 97 && lower <= 122;
}

/** Whether `s` may carry an encoded form worth decoding. */
export function mayBeEncoded(s: string): boolean {
  return s.includes('%') || s.includes('&');
}

// The escape read by readEscape: where it ends, and what it decodes to: one UTF-16 code unit, or
// (unit -1) a string: a character beyond U+FFFF, or the escape itself when it is kept as sent.
// Module state rather than an object per escape, since a hostile value holds a million of them.
let escapeEnd = 0;
let decodedUnit = 0;
let decodedText = '';

/**
 * Reads the escape that starts at `at`: `%XX`, `%uXXXX`, `&#xH…;`, `&#D…;` (the `;` optional,
 * leading zeros any number) or `&name;`. False when none starts there. A numeric reference
 * beyond U+10FFFF and an unknown name are read (so not rescanned) but kept as they are.
 */
function readEscape(s: string, at: number): boolean {
  const n = s.length;
  const c = s.charCodeAt(at);
  if (c === PERCENT) {
    const h1 = at + 2 < n ? hexValue(s.charCodeAt(at + 1)) : -1;
    const h2 = h1 === -1 ? -1 : hexValue(s.charCodeAt(at + 2));
    if (h2 !== -1) return decoded(h1 * 16 + h2, at + 3);
    if (at + 5 < n && (s.charCodeAt(at + 1) | 32) === 117) {
      let code = 0;
      for (let i = at + 2; i < at + 6; i++) {
        const h = hexValue(s.charCodeAt(i));
        if (h === -1) return false;
        code = code * 16 + h;
      }
      return decoded(code, at + 6);
    }
    return false;
  }
  if (c !== AMPERSAND || at + 1 >= n) return false;
  if (s.charCodeAt(at + 1) === HASH) {
    const hex = at + 2 < n && (s.charCodeAt(at + 2) | 32) === 120;
    const maxDigits = hex ? 6 : 7;
    let i = at + (hex ? 3 : 2);
    const zerosFrom = i;
    while (i < n && s.charCodeAt(i) === 48) i++;
    let code = 0;
    let digits = 0;
    for (; digits < maxDigits && i < n; digits++, i++) {
      const d = s.charCodeAt(i);
      const value = hex ? hexValue(d) : d >= 48 && d <= 57 ? d - 48 : -1;
      if (value === -1) break;
      code = hex ? code * 16 + value : code * 10 + value;
    }
    // "&#x0" is a zero, not leading zeros with no digit after them.
    if (digits === 0 && i === zerosFrom) return false;
    if (i < n && s.charCodeAt(i) === SEMICOLON) i++;
    if (code <= 0xffff) return decoded(code, i);
    decodedUnit = -1;
    decodedText = code <= 0x10ffff ? String.fromCodePoint(code) : s.slice(at, i);
    escapeEnd = i;
    return true;
  }
  let i = at + 1;
  let h = 0;
  for (; i < n && i - at <= 8; i++) {
    const letter = s.charCodeAt(i);
    if (!isAsciiLetter(letter)) break;
    h = (Math.imul(h, 31) + (letter | 32)) | 0;
  }
  const length = i - at - 1;
  if (length < 2 || length > 8 || i >= n || s.charCodeAt(i) !== SEMICOLON) return false;
  const index = namedIndex(s, at + 1, i, h);
  if (index === -1) {
    decodedUnit = -1;
    decodedText = s.slice(at, i + 1);
    escapeEnd = i + 1;
    return true;
  }
  return decoded(NAMED[index][1].charCodeAt(0), i + 1);
}

function decoded(unit: number, end: number): true {
  decodedUnit = unit;
  escapeEnd = end;
  return true;
}

/** Whether an escape may start at `at`, where `c` is: `%` before a hex digit or `u`, `&` before `#` or a letter. */
function mayStartEscape(s: string, at: number, c: number): boolean {
  if (c !== PERCENT && c !== AMPERSAND) return false;
  const next = at + 1 < s.length ? s.charCodeAt(at + 1) : 0;
  if (c === PERCENT) return hexValue(next) !== -1 || (next | 32) === 117;
  return next === HASH || isAsciiLetter(next);
}

/** `s` with percent escapes, `%uXXXX` and HTML character references decoded once (unknown ones kept). */
export function decodeOnce(s: string): string {
  const n = s.length;
  for (let at = 0; at < n; at++) {
    const c = s.charCodeAt(at);
    if (mayStartEscape(s, at, c) && readEscape(s, at)) return n < BUFFERED ? decodeInPieces(s, at) : decodeInBuffer(s, at);
  }
  return s;
}

// From this length on the decoded text is written into one buffer: appending a piece per escape
// makes a string object per piece, most of the cost of a long value made of escapes.
const BUFFERED = 4096;

function decodedPiece(): string {
  return decodedUnit === -1 ? decodedText : String.fromCharCode(decodedUnit);
}

/** The rest of `decodeOnce`, the escape at `first` just read: one string piece per escape. */
function decodeInPieces(s: string, first: number): string {
  let out = s.slice(0, first) + decodedPiece();
  let copied = escapeEnd;
  for (let at = copied; at < s.length; at++) {
    if (!mayStartEscape(s, at, s.charCodeAt(at)) || !readEscape(s, at)) continue;
    out += at === copied ? decodedPiece() : s.slice(copied, at) + decodedPiece();
    copied = escapeEnd;
    at = escapeEnd - 1;
  }
  return out + s.slice(copied);
}

/** The rest of `decodeOnce`, the escape at `first` just read: UTF-16LE into one buffer (the decoded text is never longer). */
function decodeInBuffer(s: string, first: number): string {
  const buffer = Buffer.allocUnsafe(2 * s.length);
  let written = copyInto(buffer, 0, s, 0, first);
  written = writeDecoded(buffer, written);
  let copied = escapeEnd;
  for (let at = copied; at < s.length; at++) {
    if (!mayStartEscape(s, at, s.charCodeAt(at)) || !readEscape(s, at)) continue;
    if (at > copied) written = copyInto(buffer, written, s, copied, at);
    written = writeDecoded(buffer, written);
    copied = escapeEnd;
    at = escapeEnd - 1;
  }
  written = copyInto(buffer, written, s, copied, s.length);
  return buffer.toString('utf16le', 0, written);
}

// Shorter runs of plain text are copied a code unit at a time, longer ones by the native copy.
const NATIVE_COPY = 16;

/** Writes `s[from, to)` into `buffer` at byte `written` as UTF-16LE; the new byte count. */
function copyInto(buffer: Buffer, written: number, s: string, from: number, to: number): number {
  if (to - from >= NATIVE_COPY) return written + buffer.write(s.slice(from, to), written, 'utf16le');
  let at = written;
  for (let i = from; i < to; i++) at = writeUnit(buffer, at, s.charCodeAt(i));
  return at;
}

function writeDecoded(buffer: Buffer, written: number): number {
  if (decodedUnit !== -1) return writeUnit(buffer, written, decodedUnit);
  return copyInto(buffer, written, decodedText, 0, decodedText.length);
}

function writeUnit(buffer: Buffer, at: number, unit: number): number {
  buffer[at] = unit & 0xff;
  buffer[at + 1] = unit >>> 8;
  return at + 2;
}

/** The patterns of this module, for the linear-time test (the decoder itself uses none). */
export const DECODE_PATTERNS: readonly RegExp[] = [];
