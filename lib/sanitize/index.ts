import { commandInjection } from './command-injection';
import { decodeOnce, mayBeEncoded } from './decode';
import { nosql } from './nosql';
import { pathTraversal } from './path-traversal';
import { sql } from './sql';
import type { Category, StringDetector } from './types';
import { xss } from './xss';

export type { Action, Category, StringDetector } from './types';
export { isOperatorKey } from './nosql';

/** Every string detector, by category, in the order `sanitize` runs them. */
export const DETECTORS: Readonly<Record<Category, StringDetector>> = { xss, sql, nosql, pathTraversal, commandInjection };

/** The categories whose attacks `text` carries (as sent, or decoded once), in `sanitize`'s order. */
export function detectAttacks(text: string): Category[] {
  const found: Category[] = [];
  let decoded: string | undefined;
  for (const d of Object.values(DETECTORS)) {
    if (!d.trigger.test(text)) continue;
    if (d.detect(text)) found.push(d.category);
    else if (mayBeEncoded(text)) {
      decoded ??= decodeOnce(text);
      if (decoded !== text && d.detect(decoded)) found.push(d.category);
    }
  }
  return found;
}
