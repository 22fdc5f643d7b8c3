import { ConfigError } from '../errors';

/** A compiled `allow` list: bare key names, and a tree of full paths. */
export interface AllowList {
  /** Keys that keep raw input wherever they appear (`'markdown'`). */
  names: ReadonlySet<string>;
  /** Full paths by source (`'body.post.markdown'` → body → post → markdown). */
  root: AllowNode;
}

/** One segment of an allowed path. */
export interface AllowNode {
  /** This path itself is allowed (so is everything under it). */
  terminal: boolean;
  children: Map<string, AllowNode>;
}

const SOURCES = ['query', 'body', 'params'];

/** Compiles `allow` once at setup; `option` names it in errors. */
export function compileAllow(allow: unknown, option: string): AllowList {
  const names = new Set<string>();
  const root: AllowNode = { terminal: false, children: new Map() };
  if (allow === undefined) return { names, root };
  if (!Array.isArray(allow)) throw new ConfigError(option, `expected an array of field paths like ['body.markdown'] or key names like ['markdown'], got ${typeof allow}`);
  for (const entry of allow) {
    if (typeof entry !== 'string' || entry.trim() === '') {
      throw new ConfigError(option, `expected field paths like 'body.markdown' or key names like 'markdown', got ${JSON.stringify(entry)}`);
    }
    const segments = entry.split('.');
    if (segments.length === 1) {
      names.add(entry);
      continue;
    }
    if (!SOURCES.includes(segments[0]) || segments.some((s) => s === '')) {
      throw new ConfigError(option, `'${entry}': a path must start with query., body. or params. (e.g. 'body.${segments[segments.length - 1] || 'field'}'); a bare name like '${segments[segments.length - 1] || 'field'}' matches that key anywhere`);
    }
    let node = root;
    for (const segment of segments) {
      let child = node.children.get(segment);
      if (child === undefined) {
        child = { terminal: false, children: new Map() };
        node.children.set(segment, child);
      }
      node = child;
    }
    node.terminal = true;
  }
  return { names, root };
}

/** The node below `node` for `key` (`*` matches any key), if any allowed path continues there. */
export function allowChild(node: AllowNode | undefined, key: string): AllowNode | undefined {
  if (node === undefined || node.children.size === 0) return undefined;
  return node.children.get(key) ?? node.children.get('*');
}
