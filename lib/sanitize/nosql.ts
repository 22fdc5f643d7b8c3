import { ruleDetector } from './rules';
import type { Rule } from './types';

const OPERATORS =
  'ne|eq|gt|gte|lt|lte|in|nin|regex|where|exists|or|and|not|nor|expr|elemMatch|size|type|mod|all|text|search|function|accumulator|jsonSchema|lookup|merge|out|set|unset|push|inc|rename|comment';

const rules: Rule[] = [
  // An operator written into a string the app may parse: {"$ne": null}, [$gt]=, $where: '…'.
  { re: new RegExp(`(?:^|[{\\[,"'\\s])\\$(?:${OPERATORS})\\b\\s*["']?\\s*[:\\]=]`), cut: 'rest' },
  // Server-side JavaScript through $where: ' || '1'=='1, '; return true; var x=', ';sleep(5000);'.
  {
    re: /['"]\s*(?:\|\||&&|;)\s*(?:['"]?\w{0,20}['"]?\s*===?|return\b|sleep\s*\(|while\s*\(|this\s*\.|true\b|\d+\s*===?)/i,
    cut: 'rest',
  },
  // Sandbox escapes and mongo shell calls: this.constructor.constructor('return process')(), db.users.drop().
  // Detection needs only the word's last character before the dot: no backtracking through words.
  {
    re: /\b\w+\s*\.\s*constructor\s*\.\s*constructor\s*\(|\bdb\s*\.\s*\w+\s*\.\s*(?:find|insert|drop|remove|update|delete\w*)\s*\(/i,
    test: /\w\s*\.\s*constructor\s*\.\s*constructor\s*\(|\bdb\s*\.\s*\w+\s*\.\s*(?:find|insert|drop|remove|update|delete\w*)\s*\(/i,
    cut: 'rest',
  },
];

/**
 * NoSQL injection in strings: query operators written into a value (`{"$ne": null}`,
 * `[$gt]=`), `$where` JavaScript tautologies and delays (`' || '1'=='1`, `;sleep(5000)`),
 * and sandbox escapes. Object keys are checked by {@link isOperatorKey}. Strip cuts the value
 * where the injection starts.
 */
export const nosql = ruleDetector('nosql', { chars: '$\'"|&;.%' }, rules);

/**
 * Whether an object key is a MongoDB operator or path (`$ne`, `$where`, `profile.role`), or a
 * bracket operator that a later qs parse would turn into one (`username[$ne]`).
 */
export function isOperatorKey(key: string): boolean {
  return key.charCodeAt(0) === 36 || key.includes('.') || key.includes('[$');
}
