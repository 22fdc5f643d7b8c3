import { triggerPattern, type Trigger } from './trigger';
import type { Category, Rule, StringDetector } from './types';

/** Builds a detector from rules: `detect` is any rule matching, `strip` removes what each rule names. */
export function ruleDetector(category: Category, triggerSpec: Trigger, rules: readonly Rule[]): StringDetector {
  const trigger = triggerPattern(triggerSpec);
  // A global copy of each rule for scans over every match; plain `test` uses the original.
  const global = rules.map((r) => new RegExp(r.re.source, r.re.flags.includes('g') ? r.re.flags : `${r.re.flags}g`));

  const firstAccepted = (i: number, s: string): RegExpExecArray | null => {
    const g = global[i];
    const accept = rules[i].accept;
    g.lastIndex = 0;
    for (let m = g.exec(s); m !== null; m = g.exec(s)) {
      if (accept === undefined || accept(m, s)) return m;
      if (m[0].length === 0) g.lastIndex++;
    }
    return null;
  };

  return {
    category,
    trigger,
    triggerSpec,
    patterns: [trigger, ...rules.flatMap((r) => (r.test === undefined ? [r.re] : [r.re, r.test]))],
    detect(s) {
      for (let i = 0; i < rules.length; i++) {
        const rule = rules[i];
        if (rule.accept === undefined ? (rule.test ?? rule.re).test(s) : firstAccepted(i, s) !== null) return true;
      }
      return false;
    },
    strip(s) {
      let out = s;
      for (let i = 0; i < rules.length; i++) {
        const rule = rules[i];
        if (rule.cut === 'rest') {
          const m = firstAccepted(i, out);
          if (m !== null) out = out.slice(0, m.index);
          continue;
        }
        const accept = rule.accept;
        const input = out;
        out = out.replace(global[i], (match: string, ...rest: unknown[]) => {
          if (accept === undefined) return '';
          // replace() passes (match, ...groups, offset, input[, named groups]).
          const offset = rest.find((v) => typeof v === 'number') as number;
          const m = Object.assign([match], { index: offset, input }) as unknown as RegExpExecArray;
          return accept(m, input) ? '' : match;
        });
      }
      return out;
    },
  };
}
