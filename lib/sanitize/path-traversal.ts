import { ruleDetector } from './rules';
import type { Rule } from './types';

// A dot and a separator in every spelling that servers and frameworks have been fooled by:
// plain, percent-encoded (also double-encoded, `%252e`), overlong UTF-8 (`%c0%ae`, `%c0%af`),
// IIS `%u` escapes and full-width forms.
const DOT = '(?:\\.|%(?:25)*2e|%c0%ae|%e0%80%ae|%c0%2e|%u002e|%uff0e)';
const SLASH = '(?:[\\\\/]{1,2}|%(?:25)*(?:2f|5c)|%25%(?:2f|5c)|%c0%af|%c1%9c|%c0%2f|%c1%1c|%e0%80%af|%u2215|%u2216|%uff0f|%u002f|%u005c)';

// Separators may come doubled, as in a JSON- or C-escaped Windows path (\\\\windows\\\\system32).
const SENSITIVE =
  '(?:etc[\\\\/]{1,2}(?:passwd|shadow|gshadow|group|hosts|hostname|issue|motd|sudoers|crontab|fstab|resolv\\.conf|master\\.passwd|os-release|lsb-release|profile|environment|ssh[\\\\/]{1,2}|ssl[\\\\/]{1,2}|mysql[\\\\/]{1,2}|apache2?[\\\\/]{1,2}|nginx[\\\\/]{1,2}|httpd[\\\\/]{1,2}|php|security[\\\\/]{1,2}|network[\\\\/]{1,2}|init\\.d[\\\\/]{1,2}|cron)' +
  '|proc[\\\\/]{1,2}(?:self|\\d+)[\\\\/]{1,2}|var[\\\\/]{1,2}(?:log|www|run|lib|mail|spool)[\\\\/]{1,2}|root[\\\\/]{1,2}|home[\\\\/]{1,2}[^\\\\/\\s]{1,64}[\\\\/]{1,2}\\.(?:ssh|bash_history|aws)' +
  '|dev[\\\\/]{1,2}(?:tcp|udp)[\\\\/]{1,2}|boot\\.ini|win\\.ini|system\\.ini' +
  '|(?:windows|winnt)[\\\\/]{1,2}(?:system32|system|win\\.ini|repair|debug|panther)|inetpub[\\\\/]{1,2}|web-inf[\\\\/]{1,2})';

const rules: Rule[] = [
  // ../ and ..\ (with ..;/ for Tomcat), in any encoding.
  { re: new RegExp(`${DOT}${DOT};?${SLASH}`, 'i'), cut: 'span' },
  // A trailing /.. or a value that is only "..".
  { re: new RegExp(`(?:${SLASH}|^)${DOT}${DOT}$`, 'i'), cut: 'span' },
  // NUL bytes cut a path short in C-backed file APIs (file.php%00.jpg).
  { re: /\0|%(?:25)*00/, cut: 'span' },
  // Absolute paths to files an attacker wants: /etc/passwd, /proc/self/environ, C:\Windows\win.ini.
  { re: new RegExp(`(?:[\\\\/]{1,2}|\\b[a-z]:[\\\\/]{0,2})${SENSITIVE}`, 'i'), cut: 'span' },
  // Dotfiles that hold secrets, alone or at the end of a path: .htaccess, .env, .git/config, ~/.ssh/.
  { re: /(?:^|[\\/])\.(?:ssh|aws|git|env|htaccess|htpasswd|bash_history|docker)(?:[\\/]|$)/i, cut: 'span' },
  // URL wrappers that read local files (file://, php://filter, phar://, zip://, expect://).
  { re: /\b(?:file|php|phar|zip|expect|glob|jar|netdoc):\/\//i, cut: 'span' },
];

/**
 * Path traversal: `../` and `..\` in plain, percent-encoded, double-encoded, overlong-UTF-8 and
 * `%u` forms, a trailing `/..`, NUL bytes, absolute paths to sensitive files (`/etc/passwd`,
 * `/proc/self/environ`, `C:\Windows\win.ini`), secret dotfiles (`.htaccess`, `.env`, `.git/`)
 * and local-file URL wrappers (`file://`, `php://filter`). Strip removes those sequences, so `../../etc/passwd` becomes `etc/passwd`.
 */
export const pathTraversal = ruleDetector('pathTraversal', { chars: './\\%\0&' }, rules);
