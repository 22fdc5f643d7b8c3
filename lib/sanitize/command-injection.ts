import { triggerPattern, type Trigger } from './trigger';
import type { StringDetector } from './types';

const COMMAND_TRIGGER: Trigger = { chars: ';|&\n\r`$<>%' };

// Commands that never appear as ordinary words: any continuation counts.
const SPECIFIC = new Set(
  (
    'whoami uname ifconfig ipconfig nslookup netstat systeminfo certutil bitsadmin powershell pwsh wget curl ncat netcat ' +
    'socat busybox xterm msfvenom chmod chown chgrp crontab mkfifo mknod xxd nohup sudo hostname tasklist taskkill ' +
    'wmic getent lsof nmap telnet tftp printenv uptime ifup iptables useradd usermod passwd sshpass rundll32 regsvr32 ' +
    'mshta cscript wscript schtasks vssadmin nc'
  ).split(' '),
);
// Short shell words that are also English or abbreviations ("cat food", "id number", "rm 204"):
// they count when what follows looks like shell (a flag, a path, a file, a redirect) or nothing does.
const SHELL_WORDS = new Set(
  (
    'id ls ll pwd cat tac echo printf ping sleep kill killall env set dir ver type find grep egrep head tail more less touch ' +
    'cp mv rm rmdir mkdir ps who w last date uptime bash sh zsh ksh csh tcsh su ssh scp ftp tar zip unzip gzip dd tee ' +
    'awk sed cut sort uniq od strings file stat du df mount host dig whois route arp timeout exec eval source nl ' +
    'sha1sum md5sum chattr sort expr base64 usleep'
  ).split(' '),
);
// Code-execution calls (PHP, Perl, Python) reached through an injected separator: ;system('id').
const CODE_EXEC = new Set(['system', 'shell_exec', 'passthru', 'popen', 'proc_open', 'pcntl_exec', 'exec']);
const CODE_EXEC_CALL = /\s{0,4}\(\s{0,4}['"`$]/y;
// Interpreters, which are also language names in prose ("skills: java; python; sql"): they
// count only with a flag or path after them, or when input is piped into them.
const INTERPRETERS = new Set('python python2 python3 perl ruby php node nodejs lua java jrunscript cmd dash'.split(' '));
// Windows `net` needs its sub-command (NET_SUBCOMMANDS) to be told from "profit & net income".

// A second command can start after ; | || & && newline, backtick, $( and process substitution
// <( >( (SEPARATOR_START marks their first character, separatorLength reads the rest).
const SEPARATOR_START = new Uint8Array(128);
for (const c of ';|&\n\r`$<>') SEPARATOR_START[c.charCodeAt(0)] = 1;
// What a command after a separator can start with: readToken's prefix characters, a letter, a
// path, a quote, a dot or an underscore. Anything else (`;;`, `&&&`, `;\n`) is passed over at once.
const COMMAND_START = new Uint8Array(128);
for (const c of ' \t{(!/\\\'"._abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ') COMMAND_START[c.charCodeAt(0)] = 1;
// What follows a command name. Sticky: each is tried at one position, copying nothing.
const ARG = /(?:-{1,2}[\w-]|[/~$'"><{*\\%]|\.{1,2}\/|[\w@:-]{0,128}[./\\:][\w@./\\:-])/y;
// `sleep 5` alone is a probe; "id 12345" is an order number.
const NUMBER_ARG = /\d{1,9}[ \t]*(?:$|[;|&`)\n\r])/y;
const INTERPRETER_ARG = /(?:-{1,2}\w|[/<>]|\.{1,2}\/)/y;
const NET_SUBCOMMANDS = /[ \t]{1,16}(?:user|localgroup|group|view|share|use|accounts|session|start|stop)\b/iy;

// What a name is, as bits, by its lower-case spelling.
const IS_SPECIFIC = 1;
const IS_SHELL_WORD = 2;
const IS_INTERPRETER = 4;
const IS_CODE_EXEC = 8;
const IS_NET = 16;
const TAKES_NUMBER = 32;
const KINDS = new Map<string, number>();
const addKind = (names: Iterable<string>, bit: number) => {
  for (const name of names) KINDS.set(name, (KINDS.get(name) ?? 0) | bit);
};
addKind(SPECIFIC, IS_SPECIFIC);
addKind(SHELL_WORDS, IS_SHELL_WORD);
addKind(INTERPRETERS, IS_INTERPRETER);
addKind(CODE_EXEC, IS_CODE_EXEC);
addKind(['net'], IS_NET);
addKind(['sleep', 'usleep', 'timeout'], TAKES_NUMBER);
// Names by a hash of their letters, so the name after a separator is looked up without building
// a string: the many separators followed by ordinary words (`&lt;`, `; and`, `| x`) cost a few
// character reads and no allocation.
const BY_HASH = new Map<number, string[]>();
// A bit per hash value modulo its size: most words miss here, before the map is asked.
const HASH_SEEN = new Uint8Array(4096);
for (const name of KINDS.keys()) {
  const h = hashOf(name);
  BY_HASH.set(h, [...(BY_HASH.get(h) ?? []), name]);
  HASH_SEEN[h & 4095] = 1;
}

function hashOf(name: string): number {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (Math.imul(h, 31) + (name.charCodeAt(i) | 32)) | 0;
  return h;
}

// The name of the token being read, without quotes, backslashes, `^` and `$@` (which a shell
// removes: `w'h'o'am'i`), after its last `/`. Reused: a hostile value has a separator every
// other character.
const NAME_BUFFER = 16;
const name = new Uint16Array(NAME_BUFFER);

/** A character of `[\w.\\/'"^-]`, what a command token is made of. */
function isTokenChar(c: number): boolean {
  return (
    (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) ||
    c === 95 || c === 46 || c === 92 || c === 47 || c === 39 || c === 34 || c === 94 || c === 45
  );
}

/** Whether `s[from, to)` is `bin`, `sbin` or `system32`, in any case. */
function isBinDir(s: string, from: number, to: number): boolean {
  const n = to - from;
  if (n !== 3 && n !== 4 && n !== 8) return false;
  const word = n === 3 ? 'bin' : n === 4 ? 'sbin' : 'system32';
  for (let i = 0; i < n; i++) if ((s.charCodeAt(from + i) | 32) !== word.charCodeAt(i)) return false;
  return true;
}

/** The kind bits of the first `length` characters of `name` (0 for any other word). */
function kindOfName(length: number): number {
  if (length > NAME_BUFFER) return 0;
  let h = 0;
  for (let k = 0; k < length; k++) h = (Math.imul(h, 31) + (name[k] | 32)) | 0;
  if (HASH_SEEN[h & 4095] === 0) return 0;
  const candidates = BY_HASH.get(h);
  if (candidates === undefined) return 0;
  for (const candidate of candidates) {
    if (candidate.length !== length) continue;
    let k = 0;
    while (k < length && (name[k] | 32) === candidate.charCodeAt(k)) k++;
    if (k === length) return KINDS.get(candidate) as number;
  }
  return 0;
}

/** Whether the first `length` characters of `name` have both lower- and upper-case letters. */
function isMixedCase(length: number): boolean {
  let lower = false;
  let upper = false;
  for (let k = 0; k < length; k++) {
    const c = name[k];
    if (c >= 97 && c <= 122) lower = true;
    else if (c >= 65 && c <= 90) upper = true;
  }
  return lower && upper;
}

function stickyTest(re: RegExp, s: string, at: number): boolean {
  re.lastIndex = at;
  return re.test(s);
}

/**
 * Where the padding between a command and its argument ends: spaces, tabs, `${IFS}`, `$IFS`
 * (not followed by a word character) and `<` redirects, any number of them.
 */
function skipPadding(s: string, at: number): number {
  const n = s.length;
  let i = at;
  while (i < n) {
    const c = s.charCodeAt(i);
    if (c === 32 || c === 9 || c === 60) i++;
    else if (c === 36 && s.startsWith('${IFS}', i)) i += 6;
    else if (c === 36 && s.startsWith('$IFS', i) && !isWordChar(i + 4 < n ? s.charCodeAt(i + 4) : -1)) i += 4;
    else break;
  }
  return i;
}

function isWordChar(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c === 95;
}

function isEnd(s: string, at: number): boolean {
  if (at >= s.length) return true;
  const c = s.charCodeAt(at);
  // ; | & ` ) \n \r
  return c === 59 || c === 124 || c === 38 || c === 96 || c === 41 || c === 10 || c === 13;
}

/**
 * Whether a command starts at `at` in `s`, right after a separator; `piped` for `|`, backtick
 * and `$(`. The token there is read as a shell reads the command in it: up to 16 characters of
 * prefix (spaces, `{`, `(`, `!`), then up to 64 of `[\w.\\/'"^-]` or `$@`; its name is what
 * follows the last `/`, without `.exe`.
 */
function startsCommand(s: string, at: number, piped: boolean): boolean {
  const n = s.length;
  let i = at;
  let braced = false;
  for (const prefixEnd = Math.min(n, at + 16); i < prefixEnd; i++) {
    const c = s.charCodeAt(i);
    if (c === 123) braced = true;
    else if (c !== 32 && c !== 9 && c !== 40 && c !== 33) break; // space, tab, ( !
  }
  // A command starts with a letter, a path, a quote, a dot or an underscore.
  const first = i < n ? s.charCodeAt(i) : -1;
  const letter = first | 32;
  if (!((letter >= 97 && letter <= 122) || first === 47 || first === 92 || first === 39 || first === 34 || first === 46 || first === 95)) return false;
  let length = 0;
  let absolute = false;
  let inBinDir = false;
  let sawText = false;
  let segment = i;
  for (let units = 0; i < n && units < 64; units++) {
    const c = s.charCodeAt(i);
    if (c === 36 && i + 1 < n && s.charCodeAt(i + 1) === 64) {
      sawText = true;
      i += 2;
      continue;
    }
    if (!isTokenChar(c)) break;
    if (c !== 39 && c !== 34 && !sawText) {
      sawText = true;
      absolute = c === 47 || c === 92;
    }
    if (c === 47 || c === 92) {
      if (!inBinDir && isBinDir(s, segment, i)) inBinDir = true;
      segment = i + 1;
    }
    if (c === 47) length = 0;
    else if (c !== 39 && c !== 34 && c !== 92 && c !== 94) {
      // Longer names are no known command: they are only counted.
      if (length < NAME_BUFFER) name[length] = c;
      length++;
    }
    i++;
  }
  if (length > 4 && length <= NAME_BUFFER && name[length - 4] === 46 && (name[length - 3] | 32) === 101 && (name[length - 2] | 32) === 120 && (name[length - 1] | 32) === 101) {
    length -= 4;
  }
  const kind = kindOfName(length);
  if (kind === 0) return absolute && inBinDir;
  if (kind & IS_SPECIFIC) return true;
  let pos = i;
  if (kind & IS_CODE_EXEC && stickyTest(CODE_EXEC_CALL, s, pos)) return true;
  // Shell words are lowercase; Windows upper-case forms (DIR, TYPE, NET) are accepted too.
  const mixedCase = isMixedCase(length);
  if (kind & IS_NET && !mixedCase) return stickyTest(NET_SUBCOMMANDS, s, pos);
  if (!absolute && mixedCase) return false;
  const shellWord = (kind & IS_SHELL_WORD) !== 0;
  const interpreter = !shellWord && (kind & IS_INTERPRETER) !== 0;
  if (!shellWord && !interpreter) return absolute && inBinDir;
  if (absolute) return true;
  // In brace expansion ({cat,/etc/passwd}) the comma separates the arguments.
  let padded = false;
  if (braced && s.charCodeAt(pos) === 44) {
    pos++;
    padded = true;
  } else {
    const after = skipPadding(s, pos);
    padded = after > pos;
    pos = after;
  }
  const ends = isEnd(s, pos);
  if (shellWord) {
    if (ends || s.startsWith('${', pos) || s.charCodeAt(pos) === 62) return true;
    return padded && (stickyTest(ARG, s, pos) || ((kind & TAKES_NUMBER) !== 0 && stickyTest(NUMBER_ARG, s, pos)));
  }
  return (ends && piped) || (padded && stickyTest(INTERPRETER_ARG, s, pos));
}

/** How long the separator starting at `i` is (0: none there). */
function separatorLength(s: string, i: number): number {
  const c = s.charCodeAt(i);
  const next = i + 1 < s.length ? s.charCodeAt(i + 1) : -1;
  if (c === 124 || c === 38) return next === c ? 2 : 1; // | || & &&
  if (c === 36 || c === 60 || c === 62) return next === 40 ? 2 : 0; // $( <( >(
  return 1; // ; newline, carriage return, backtick
}

/** Where the first injection starts (its separator), or -1: one pass over the separators. */
function findInjection(s: string): number {
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || SEPARATOR_START[c] === 0) continue;
    const length = separatorLength(s, i);
    if (length === 0) continue;
    // `|`, a backtick and `$(` feed the command input: an interpreter alone reads it.
    const piped = (c === 124 && length === 1) || c === 96 || c === 36;
    const next = i + length < n ? s.charCodeAt(i + length) : 0;
    if (next < 128 && COMMAND_START[next] === 1 && startsCommand(s, i + length, piped)) return i;
    i += length - 1;
  }
  return -1;
}

/**
 * Command injection: a shell separator (`;`, `|`, `||`, `&`, `&&`, newline, backtick, `$(`)
 * followed by something that is a command: a known command name (whoami, wget, curl, nc…), a
 * short shell word (ls, cat, id, rm…) with shell-like arguments (a flag, a path, a file name, a
 * redirect) or nothing after it, an interpreter with a flag (`python -c`) or a binary path
 * (`/bin/sh`). "Hello; how are you" and "eggs; cat food; milk" are prose. Strip cuts the value
 * at the separator.
 */
export const commandInjection: StringDetector = {
  category: 'commandInjection',
  trigger: triggerPattern(COMMAND_TRIGGER),
  triggerSpec: COMMAND_TRIGGER,
  patterns: [ARG, NUMBER_ARG, CODE_EXEC_CALL, INTERPRETER_ARG, NET_SUBCOMMANDS],
  detect(s) {
    return findInjection(s) !== -1;
  },
  // One cut, at the first injection. The cut can make an earlier separator start a command (one
  // that needed the value to end there): the caller judges the result again.
  strip(s) {
    const at = findInjection(s);
    return at === -1 ? s : s.slice(0, at);
  },
};
