/** What a category cannot match without: any of these characters, or any of these words (in any case). */
export interface Trigger {
  readonly chars: string;
  readonly words?: readonly string[];
}

/**
 * The pattern of `triggers` together: one character class and the words after it, so a string
 * is scanned once for all of them (an alternation of several classes is tried class by class
 * at every position).
 */
export function triggerPattern(...triggers: Trigger[]): RegExp {
  const chars = new Set<string>();
  const words = new Set<string>();
  for (const t of triggers) {
    for (const c of t.chars) chars.add(c);
    for (const w of t.words ?? []) words.add(w.toLowerCase());
  }
  const escape = (c: string) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
  const alternatives = [`[${[...chars].map(escape).join('')}]`, ...[...words].map((w) => w.replace(/[^a-z0-9]/g, escape))];
  return new RegExp(alternatives.join('|'), 'i');
}
