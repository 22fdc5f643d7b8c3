import type { StringDetector } from './types';

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

// Where a second command can start: ; | || & && newline, backtick, $( and process substitution.
const SEPARATOR = /;|\|\|?|&&?|[\n\r`]|\$\(|[<>]\(/g;
// The rest are sticky: they read at a position of the input, so no substring is copied per separator.
const TOKEN = /[{(!\s]{0,16}((?:[\w.\\/'"^-]|\$@){1,64})/y;
const AFTER = /(?:[ \t]|\$\{IFS\}|\$IFS\b|<)+/y;
const ARG = /(?:-{1,2}[\w-]|[/~$'"><{*\\%]|\.{1,2}\/|[\w@:-]{0,128}[./\\:][\w@./\\:-])/y;
// `sleep 5` alone is a probe; "id 12345" is an order number.
const NUMBER_ARG = /\d{1,9}[ \t]*(?:$|[;|&`)\n\r])/y;
const NUMBER_COMMANDS = new Set(['sleep', 'usleep', 'timeout']);
const INTERPRETER_ARG = /(?:-{1,2}\w|[/<>]|\.{1,2}\/)/y;
const NET_SUBCOMMANDS = /[ \t]{1,16}(?:user|localgroup|group|view|share|use|accounts|session|start|stop)\b/iy;
const ABSOLUTE = /^[/\\]|^[a-z]:\\/i;
const BIN_DIR = /(?:^|[/\\])(?:s?bin|system32)[/\\]/i;
const TOKEN_NOISE = /['"\\^]|\$@/g;
const QUOTES = /['"]/g;

function stickyTest(re: RegExp, s: string, at: number): boolean {
  re.lastIndex = at;
  return re.test(s);
}

/** The command a token names, without quotes, escapes, `$@` tricks, a bin path or `.exe`. */
function commandName(token: string): string {
  let t = token.replace(TOKEN_NOISE, '');
  const slash = Math.max(t.lastIndexOf('/'), t.lastIndexOf('\\'));
  if (slash !== -1) t = t.slice(slash + 1);
  if (t.length > 4 && t.toLowerCase().endsWith('.exe')) t = t.slice(0, -4);
  return t;
}

function isEnd(s: string, at: number): boolean {
  if (at >= s.length) return true;
  const c = s.charCodeAt(at);
  // ; | & ` ) \n \r
  return c === 59 || c === 124 || c === 38 || c === 96 || c === 41 || c === 10 || c === 13;
}

/** Whether a command starts at `at` in `s`, right after the separator `sep`. */
function startsCommand(s: string, at: number, sep: string): boolean {
  TOKEN.lastIndex = at;
  const tm = TOKEN.exec(s);
  if (tm === null) return false;
  const raw = tm[1];
  const name = commandName(raw);
  const lower = name.toLowerCase();
  if (SPECIFIC.has(lower)) return true;
  let pos = at + tm[0].length;
  if (CODE_EXEC.has(lower) && stickyTest(CODE_EXEC_CALL, s, pos)) return true;
  if (lower === 'net' && (name === 'net' || name === 'NET')) return stickyTest(NET_SUBCOMMANDS, s, pos);
  const hasPath = ABSOLUTE.test(raw.replace(QUOTES, ''));
  // Shell words are lowercase; Windows upper-case forms (DIR, TYPE) are accepted too.
  if (!hasPath && name !== lower && name !== name.toUpperCase()) return false;
  const shellWord = SHELL_WORDS.has(lower);
  const interpreter = !shellWord && INTERPRETERS.has(lower);
  if (!shellWord && !interpreter) return hasPath && BIN_DIR.test(raw);
  if (hasPath) return true;
  // In brace expansion ({cat,/etc/passwd}) the comma separates the arguments.
  let padded = false;
  if (tm[0].includes('{') && s.charCodeAt(pos) === 44) {
    pos++;
    padded = true;
  } else {
    AFTER.lastIndex = pos;
    if (AFTER.test(s)) {
      pos = AFTER.lastIndex;
      padded = true;
    }
  }
  const ends = isEnd(s, pos);
  if (shellWord) {
    if (ends || s.startsWith('${', pos) || s.startsWith('>', pos)) return true;
    return padded && (stickyTest(ARG, s, pos) || (NUMBER_COMMANDS.has(lower) && stickyTest(NUMBER_ARG, s, pos)));
  }
  const piped = sep === '|' || sep === '`' || sep === '$(';
  return (ends && piped) || (padded && stickyTest(INTERPRETER_ARG, s, pos));
}

// Cheap first look after a separator: a command starts with a letter, a path, a brace or a quote.
function mayStartCommand(s: string, at: number): boolean {
  for (let i = at; i < s.length && i < at + 17; i++) {
    const c = s.charCodeAt(i);
    if (c === 32 || c === 9 || c === 123 || c === 40 || c === 33) continue; // space, tab, { ( !
    return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 47 || c === 92 || c === 39 || c === 34 || c === 46 || c === 95;
  }
  return false;
}

function findInjection(s: string): number {
  SEPARATOR.lastIndex = 0;
  for (let m = SEPARATOR.exec(s); m !== null; m = SEPARATOR.exec(s)) {
    const at = m.index + m[0].length;
    if (mayStartCommand(s, at) && startsCommand(s, at, m[0])) return m.index;
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
  trigger: /[;|&\n\r`$<>%]/,
  patterns: [SEPARATOR, TOKEN, AFTER, ARG, NUMBER_ARG, CODE_EXEC_CALL, INTERPRETER_ARG, ABSOLUTE, BIN_DIR, TOKEN_NOISE, QUOTES, NET_SUBCOMMANDS],
  detect(s) {
    return findInjection(s) !== -1;
  },
  strip(s) {
    let out = s;
    for (let at = findInjection(out); at !== -1; at = findInjection(out)) out = out.slice(0, at);
    return out;
  },
};
