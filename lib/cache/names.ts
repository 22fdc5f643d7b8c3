import { createHash } from 'node:crypto';
import type { Request } from 'express';
import { describe } from '../units';

// An entry is filed under names of three kinds, each with its own prefix so no tag can pass for a
// path: `e:<path>` its exact path, `p:<path>` each path prefix it lies under, `t:<tag>` its tags.
const EXACT = 'e:';
const PREFIX = 'p:';
const TAG = 't:';
// Longer names are filed under their hash ('h:' cannot start a name of the kinds above).
const HASHED = 'h:';
const MAX_NAME_LENGTH = 200;
// Deeper paths are filed under their first MAX_DEPTH segments (an invalidation there over-reaches, never under-reaches).
const MAX_DEPTH = 32;

/** The name every entry is filed under (the root path prefix): invalidating it drops everything. */
export const ROOT_NAME = `${PREFIX}/`;

/**
 * Names an entry of this request is filed under: its exact path, every ancestor prefix (root
 * included), its own prefix, and its tags. Prefixes end at a segment, so `/apix` is not under `/api`.
 */
export function entryNames(req: Request, tags: string[] | undefined): string[] {
  const path = indexPath(req.originalUrl || req.url);
  const names = [nameOf(EXACT, path), ROOT_NAME];
  const capped = capDepth(path);
  for (let i = capped.indexOf('/', 1); i !== -1; i = capped.indexOf('/', i + 1)) names.push(nameOf(PREFIX, capped.slice(0, i)));
  if (capped !== '/') names.push(nameOf(PREFIX, capped));
  if (tags !== undefined) for (const tag of tags) names.push(nameOf(TAG, tag));
  return names;
}

/** What a 2xx write to a path drops: everything under the path, and its collection's exact path (`PUT /games/7` → `/games`). */
export function writeNames(req: Request, tags: string[] | undefined): string[] {
  const path = indexPath(req.originalUrl || req.url);
  const names = [nameOf(PREFIX, capDepth(path))];
  if (path !== '/') {
    const slash = path.lastIndexOf('/');
    names.push(nameOf(EXACT, slash === 0 ? '/' : path.slice(0, slash)));
  }
  if (tags !== undefined) for (const tag of tags) names.push(tagName(tag));
  return names;
}

/** The name of a tag. */
export function tagName(tag: string): string {
  return nameOf(TAG, tag);
}

/** What `invalidate(tagOrPrefix)` drops: a tag, or everything under a path when it starts with `/`. */
export function invalidationNames(tagOrPrefix: string | string[]): string[] {
  const list = Array.isArray(tagOrPrefix) ? tagOrPrefix : [tagOrPrefix];
  if (list.length === 0) throw new TypeError('cache.invalidate: expected a tag, a path prefix starting with /, or an array of them; got an empty array');
  return list.map((item: unknown) => {
    if (typeof item !== 'string' || item === '') {
      throw new TypeError(`cache.invalidate: expected a tag or a path prefix starting with / (a non-empty string), got ${describe(item)}`);
    }
    return item.startsWith('/') ? nameOf(PREFIX, capDepth(indexPath(item))) : nameOf(TAG, item);
  });
}

function nameOf(kind: string, value: string): string {
  const name = kind + value;
  return name.length > MAX_NAME_LENGTH ? HASHED + createHash('sha256').update(name).digest('base64url') : name;
}

/**
 * The path as the index knows it: no query, percent-decoding of what decodeURI decodes, lower
 * case and no trailing slash. Folding case and encoding can only make an invalidation reach more
 * entries than its path, never fewer (the keys themselves stay exact).
 */
function indexPath(url: string): string {
  const q = url.indexOf('?');
  let path = q === -1 ? url : url.slice(0, q);
  if (path.includes('%')) {
    try {
      path = decodeURI(path);
    } catch {
      // Malformed escapes stay as they are.
    }
  }
  path = path.toLowerCase();
  if (path === '' || path[0] !== '/') path = `/${path}`;
  while (path.length > 1 && path.endsWith('/')) path = path.slice(0, -1);
  return path;
}

/** `/a/b/c` limited to MAX_DEPTH segments. */
function capDepth(path: string): string {
  let depth = 0;
  for (let i = 1; i < path.length; i++) {
    if (path.charCodeAt(i) === 0x2f && ++depth >= MAX_DEPTH) return path.slice(0, i);
  }
  return path;
}
