import { hasOpenQuote, openQuotes } from './quotes';
import { ruleDetector } from './rules';
import type { Rule, StringDetector } from './types';

// Whitespace or an inline comment (`UNION/**/SELECT`); the alternatives start with different
// characters, so repeating them stays linear.
const W = '(?:\\s|/\\*[^*]{0,64}\\*/)';
const WP = '(?:[\\s(]|/\\*[^*]{0,64}\\*/)';
const WC = '(?:[\\s)]|/\\*[^*]{0,64}\\*/)';
const Q = `['"\`]`;

// After a quote closed early: a boolean that makes the WHERE clause true (' OR '1'='1,
// ') or ('a'='a, ' or true--).
const TAUTOLOGY =
  `(?:or|and|xor|\\|\\||&&)(?:${WP}+|(?=['"\\d]))(?:not\\b${WP}*)?` +
  `(?:[\\w.@$(),'"\`-]{0,40}\\s*(?:=|<=>|<>|!=|>=|<=|<|>|\\blike\\b|\\bregexp\\b|\\brlike\\b|\\bis\\s+(?:not\\s+)?null\\b|\\bin\\s*\\(|\\bbetween\\b)` +
  `|(?:true|false)\\b|\\d+${WC}*(?:--|#|/\\*|;)|exists${WP}*\\(|''|"")`;
// After a quote left open: the rest commented out (admin'--, admin')#, x'/*).
const COMMENT = '(?:--|#|/\\*)';
// After a quote left open: a clause appended (' ORDER BY 3--, ' HAVING 1=1, ' GROUP BY x, ' UNION …).
const CLAUSE = `(?:union\\b|order${W}+by${W}+\\d|group${W}+by\\b|having${W}+\\d|limit${W}+\\d|procedure${W}+analyse|into${W}+(?:out|dump)file|waitfor\\b)`;

const openQuote = (m: RegExpExecArray, s: string): boolean => hasOpenQuote(s, m[0][0]);

const QUOTE_RULES = 3;
const rules: Rule[] = [
  { re: new RegExp(`${Q}${WC}*${TAUTOLOGY}`, 'i'), cut: 'rest' },
  // Balanced quotes ("she said 'no' -- then") are prose.
  { re: new RegExp(`${Q}${WC}*${COMMENT}`, 'i'), cut: 'rest', accept: openQuote },
  { re: new RegExp(`${Q}${WC}*${CLAUSE}`, 'i'), cut: 'rest', accept: openQuote },
  // Stacked statements: ; DROP TABLE users, ; EXEC xp_cmdshell, ; SELECT * FROM …
  {
    re: new RegExp(
      `;${W}*(?:drop${W}+(?:table|database|schema|view|index|user|procedure|function|trigger)\\b|delete${W}+from\\b|insert${W}+into\\b` +
        `|update${W}+[\\w.\`"\\[\\]]{1,64}${W}+set\\b|exec(?:ute)?${W}+(?:xp_|sp_|master\\.|\\(|@)|shutdown\\b|truncate${W}+(?:table${W}+)?\\w` +
        `|alter${W}+(?:table|user|database|login)\\b|create${W}+(?:table|user|database|function|procedure|login|trigger)\\b|declare${W}+@` +
        `|waitfor${W}+(?:delay|time)\\b|grant${W}+\\w+${W}+on\\b|rename${W}+table\\b|load${W}+data\\b|set${W}+@` +
        `|select${W}+(?:\\*|@@|null\\b|\\d+\\s*(?:,|--|#|;|$|from\\b)|(?:pg_)?sleep\\s*\\(|benchmark\\s*\\(|version\\s*\\(|user\\s*\\(|current_user|database\\s*\\(|load_file\\s*\\(` +
        `|[\\w.\`"]{1,64}(?:\\s*,\\s*[\\w.\`"]{1,64}){0,16}${W}+from${W}+[\\w.\`"\\[\\]]{1,64}\\s*(?:$|;|--|#|\\)|where\\b|limit\\b|order\\b|union\\b)))`,
      'i',
    ),
    cut: 'rest',
  },
  // UNION-based extraction: UNION SELECT NULL,NULL / UNION ALL SELECT username, password FROM users.
  {
    re: new RegExp(
      `\\bunion(?:${W}|\\()+(?:(?:all|distinct)(?:${W}|\\()+)?select(?:${W}|\\()+` +
        `(?:null\\b|\\d+\\s*(?:,|--|#|;|$|from\\b)|@@|\\*|0x|['"]|char\\s*\\(|(?:group_)?concat|version\\s*\\(|user\\s*\\(|database\\s*\\(|table_name|column_name|schema_name|load_file` +
        `|[\\w.\`]{1,64}\\s*,|[\\w.\`]{1,64}${W}+from\\b)`,
      'i',
    ),
    cut: 'rest',
  },
  // MySQL executable comments: /*!50000UNION*/ SELECT.
  { re: /\/\*!\d{0,6}\s*(?:union|select|and|or|sleep|benchmark)\b/i, cut: 'rest' },
  // Time delays and dangerous functions that have no business in a form field.
  {
    re: /\b(?:(?:pg_)?sleep\s*\(\s*\d+(?:\.\d+)?\s*\)|benchmark\s*\(\s*\d+\s*,|waitfor\s+(?:delay|time)\s+['"]\d|pg_sleep\s*\(|dbms_pipe\s*\.\s*receive_message\s*\(|dbms_lock\s*\.\s*sleep\s*\(|xp_cmdshell\b|sp_oacreate\b|sp_executesql\b|load_file\s*\(|utl_http\s*\.|utl_inaddr\s*\.|extractvalue\s*\(|updatexml\s*\(|information_schema\s*\.|mysql\s*\.\s*user\b|sqlite_master\b|pg_catalog\s*\.|into\s+(?:out|dump)file\s+['"]|char\s*\(\s*\d+\s*\)\s*(?:\+|\|\||,)\s*char\s*\()|@@version\b/i,
    cut: 'rest',
  },
  // A bare boolean with the rest commented out: or true--, and false#.
  { re: new RegExp(`(?:^|[\\s)])(?:or|and)${W}+(?:true|false)${WC}*(?:--|#|/\\*)`, 'i'), cut: 'rest' },
  // Tautologies without quotes, in numeric parameters: 1 OR 1=1, 1) or (2=2, 1 and x=x.
  { re: new RegExp(`(?:^|[\\s)(])(?:or|and|\\|\\||&&)${WP}+(['"]?)(\\w{1,20})\\1\\s*(?:=|\\blike\\b)\\s*['"]?\\2(?!\\w)`, 'i'), cut: 'rest' },
  // A comparison against a subquery: 1=(SELECT COUNT(*) FROM t), 1 AND (SELECT 1 FROM …).
  { re: new RegExp(`(?:=|\\b(?:or|and))${W}*\\(${W}*select${W}+(?:\\*|@@|null\\b|\\d|(?:pg_)?sleep|count\\s*\\(|char\\s*\\(|(?:group_)?concat|version|user|database|\\w+${W}+from\\b)`, 'i'), cut: 'rest' },
];

const QUOTES = ["'", '"', '`'];
// The three quote rules above as one pattern per set of open quotes (bit i: QUOTES[i] is open):
// after an open quote any of them, after a closed one only the tautology. One attempt per quote
// instead of three, which is what a value made of quotes costs.
const QUOTE_PATTERNS = Array.from({ length: 8 }, (_, mask) => {
  const open = QUOTES.filter((_q, i) => (mask & (1 << i)) !== 0).join('');
  const closed = QUOTES.filter((_q, i) => (mask & (1 << i)) === 0).join('');
  const alternatives: string[] = [];
  if (open !== '') alternatives.push(`[${open}]${WC}*(?:${TAUTOLOGY}|${COMMENT}|${CLAUSE})`);
  if (closed !== '') alternatives.push(`[${closed}]${WC}*${TAUTOLOGY}`);
  return new RegExp(alternatives.join('|'), 'i');
});

const byRules = ruleDetector('sql', { chars: '\'"`;=()#-/*@%&|', words: ['union'] }, rules);
const otherRules = rules.slice(QUOTE_RULES).map((r) => r.re);

/**
 * SQL injection structure, never bare keywords ("Please select a drop-down option" is prose): a
 * quote followed by a boolean tautology, an open quote followed by a comment or clause,
 * stacked statements (`; DROP TABLE`), `UNION SELECT`, MySQL executable comments, time delays
 * (`SLEEP(5)`, `BENCHMARK(`, `WAITFOR DELAY`), quote-less tautologies (`1 OR 1=1`) and subquery
 * comparisons. Strip cuts the value where the injection starts.
 */
export const sql: StringDetector = {
  ...byRules,
  patterns: [...byRules.patterns, ...QUOTE_PATTERNS],
  detect(s) {
    // With every quote taken as open the pattern matches a superset: only then count quotes.
    const anyOpen = QUOTE_PATTERNS[QUOTE_PATTERNS.length - 1];
    if (anyOpen.test(s) && QUOTE_PATTERNS[openQuotes(s)].test(s)) return true;
    for (const re of otherRules) if (re.test(s)) return true;
    return false;
  },
};
