import type { Trigger } from './trigger';

/** A category of attack that `sanitize` looks for. */
export type Category = 'xss' | 'sql' | 'nosql' | 'pathTraversal' | 'commandInjection';

/** What `sanitize` does with input of a category: remove the dangerous part, answer 400, or only log and count. */
export type Action = 'strip' | 'reject' | 'report';

/** One category's checks on a string. */
export interface StringDetector {
  readonly category: Category;
  /** Characters (or words) without which no rule of the category can match: the cheap first test. */
  readonly trigger: RegExp;
  /** The same, as characters and words, for a union with other categories' ({@link triggerPattern}). */
  readonly triggerSpec: Trigger;
  /** Whether `s` carries an attack of this category (on the text as given; the caller also tries it decoded). */
  detect(s: string): boolean;
  /** `s` with the offending token sequences removed; called only on a string `detect` accepted. */
  strip(s: string): string;
  /** Every regular expression the detector runs, so a test can prove each is linear. */
  readonly patterns: readonly RegExp[];
}

/** A rule of a {@link StringDetector}: a pattern, and what `strip` removes when it matches. */
export interface Rule {
  /** Must be linear: no nested or adjacent quantifiers over overlapping characters. Flags: `i` only (no `g`). */
  re: RegExp;
  /** 'span' removes each match; 'rest' cuts the string at the first match (everything after it is the injected code). */
  cut: 'span' | 'rest';
  /** Extra test of a match, for what a regex cannot say cheaply (a word list, quote balance). */
  accept?: (match: RegExpExecArray, s: string) => boolean;
  /** A cheaper pattern for detection, matching some part of a string exactly when `re` does; `re` still says where strip cuts. Not with `accept`. */
  test?: RegExp;
}
