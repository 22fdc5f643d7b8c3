import { ConfigError } from './errors';
import { describe } from './units';

/** Patterns a user lists so that requests no route answered still get a bounded label. */
export type PathLabeller = (path: string) => string | undefined;

const MAX_PATTERNS = 1000;
const SEGMENT = /^(?::[A-Za-z_][A-Za-z0-9_]*|[^:*?#\s]*)$/;

/**
 * Compiles route-like patterns (`/users/:id`, `/files/*`) once into one matcher: a path gets the
 * first pattern it matches (a `:name` is one segment, a trailing `*` is the rest; matched without
 * regard to case or a trailing slash, as Express routes by default), or undefined. The label
 * is the pattern as written, so the label set is the list plus the fallback: bounded.
 */
export function compilePathPatterns(patterns: unknown, option: string): PathLabeller | undefined {
  if (patterns === undefined) return undefined;
  if (!Array.isArray(patterns) || patterns.length > MAX_PATTERNS) {
    throw new ConfigError(option, `expected an array of at most ${MAX_PATTERNS} route patterns like ['/users/:id', '/files/*'], got ${describe(patterns)}`);
  }
  if (patterns.length === 0) return undefined;
  const sources = patterns.map((pattern: unknown, i) => patternSource(pattern, `${option}[${i}]`));
  // One regex for all: a request tries the list in one pass; the first alternative that matches wins.
  const matcher = new RegExp(`^(?:${sources.map((s) => `(${s})`).join('|')})/?$`, 'i');
  const labels = patterns as string[];
  return (path) => {
    const match = matcher.exec(path);
    if (match === null) return undefined;
    for (let i = 1; i < match.length; i++) if (match[i] !== undefined) return labels[i - 1];
    return undefined;
  };
}

function patternSource(pattern: unknown, option: string): string {
  if (typeof pattern !== 'string' || !pattern.startsWith('/')) {
    throw new ConfigError(option, `expected a route pattern starting with '/' like '/users/:id', got ${describe(pattern)}`);
  }
  const segments = pattern.slice(1).split('/');
  const parts: string[] = [];
  for (const [i, segment] of segments.entries()) {
    if (segment === '*' && i === segments.length - 1) {
      parts.push('(?:/.*)?');
      continue;
    }
    if (!SEGMENT.test(segment)) {
      throw new ConfigError(option, `'${pattern}': each segment is literal text or a :name, and '*' may only end the pattern (like '/files/*')`);
    }
    // Capture-free, so the outer alternation's groups number the patterns.
    parts.push(segment.startsWith(':') ? '/[^/]+' : `/${escapeRegExp(segment)}`);
  }
  // '/' alone is the root; its trailing slash is the optional one added by the caller.
  return pattern === '/' ? '' : parts.join('');
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
