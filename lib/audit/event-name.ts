/**
 * Event names for audit records: `POST /api/games` → `GAME_CREATED`. The resource is the last
 * literal segment of the route template, singularised and in UPPER_SNAKE case.
 */

const VERBS: Record<string, string> = {
  POST: 'CREATED',
  PUT: 'UPDATED',
  PATCH: 'UPDATED',
  DELETE: 'DELETED',
  GET: 'READ',
  HEAD: 'READ',
};

/** The past-tense verb of an event for `method` (`POST` → `CREATED`); other methods keep their name. */
export function verbOf(method: string): string {
  return VERBS[method] ?? method.toUpperCase().replace(/[^A-Z0-9]+/g, '_');
}

// Words with no singular of their own, or whose singular is the same word.
const UNCOUNTABLE = new Set([
  'news', 'series', 'species', 'data', 'media', 'metadata', 'info', 'information', 'feedback', 'equipment', 'analytics',
  'physics', 'economics', 'ethics', 'logistics', 'mathematics', 'software', 'hardware', 'firmware', 'music', 'money',
  'police', 'sheep', 'fish', 'deer', 'moose', 'rice', 'advice', 'sms', 'gps', 'dns', 'cors', 'ios', 'chaos', 'status',
]);

// Plurals no suffix rule gets right.
const IRREGULAR: Record<string, string> = {
  people: 'person', men: 'man', women: 'woman', children: 'child', mice: 'mouse', geese: 'goose', teeth: 'tooth',
  feet: 'foot', oxen: 'ox', criteria: 'criterion', phenomena: 'phenomenon', indices: 'index', matrices: 'matrix',
  vertices: 'vertex', appendices: 'appendix', leaves: 'leaf', lives: 'life', knives: 'knife', wives: 'wife',
  halves: 'half', shelves: 'shelf', wolves: 'wolf', thieves: 'thief', loaves: 'loaf', calves: 'calf', selves: 'self',
  movies: 'movie', cookies: 'cookie', zombies: 'zombie', selfies: 'selfie', rookies: 'rookie', pies: 'pie',
  ties: 'tie', lies: 'lie', dies: 'die', quizzes: 'quiz', heroes: 'hero', potatoes: 'potato', tomatoes: 'tomato',
  echoes: 'echo', vetoes: 'veto', torpedoes: 'torpedo', cacti: 'cactus', fungi: 'fungus', alumni: 'alumnus',
  syllabi: 'syllabus', radii: 'radius', stimuli: 'stimulus', analyses: 'analysis', crises: 'crisis', theses: 'thesis',
  diagnoses: 'diagnosis', hypotheses: 'hypothesis', synopses: 'synopsis', parentheses: 'parenthesis', oases: 'oasis',
  aliases: 'alias', biases: 'bias', atlases: 'atlas', canvases: 'canvas', gases: 'gas', abuses: 'abuse',
  excuses: 'excuse', fuses: 'fuse', refuses: 'refuse', muses: 'muse', accuses: 'accuse',
};

// 'caches' and 'niches' end in -ches but their singular keeps the e.
const CHE_WORDS = ['cache', 'niche', 'headache', 'stache', 'avalanche', 'cliche', 'creche', 'psyche'];

/** The singular of an English plural noun (lower case), by a small rule set: `categories` → `category`, `addresses` → `address`, `people` → `person`. */
export function singularize(word: string): string {
  const w = word.toLowerCase();
  if (UNCOUNTABLE.has(w)) return w;
  const irregular = IRREGULAR[w];
  if (irregular !== undefined) return irregular;
  if (w.length <= 2 || !w.endsWith('s')) return w;
  // Already singular: class, address, status, bus, analysis.
  if (w.endsWith('ss') || w.endsWith('us') || w.endsWith('is')) return w;
  if (w.endsWith('ies') && w.length > 4) return `${w.slice(0, -3)}y`;
  if (w.endsWith('sses') || w.endsWith('xes') || w.endsWith('shes') || w.endsWith('zzes')) return w.slice(0, -2);
  if (w.endsWith('ches')) {
    const withE = w.slice(0, -1);
    return CHE_WORDS.some((c) => withE.endsWith(c)) ? withE : w.slice(0, -2);
  }
  if (w.endsWith('uses')) {
    const stem = w.slice(0, -2);
    // houses, causes, clauses, spouses, uses keep their e; statuses, buses, viruses, bonuses do not.
    return /(?:[aeo]u|^u)s$/.test(stem) ? `${stem}e` : stem;
  }
  return w.slice(0, -1);
}

/** Words of a path segment: kebab, snake, dotted and camelCase all split (`studySessions` → ['study', 'Sessions']). */
function words(segment: string): string[] {
  return segment
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .split(/[^A-Za-z0-9]+/)
    .filter((w) => w !== '');
}

/** UPPER_SNAKE name of a resource segment, its last word singularised: `study-sessions` → `STUDY_SESSION`. */
export function resourceName(segment: string): string {
  const parts = words(segment);
  if (parts.length === 0) return 'RESOURCE';
  parts[parts.length - 1] = singularize(parts[parts.length - 1]);
  return parts.join('_').toUpperCase();
}

/** What a route template says about its requests, worked out once per template. */
export interface TemplateInfo {
  /** The resource name (`GAME`), or undefined when the template has no literal segment. */
  resource: string | undefined;
  /** Segments when every one is a literal or a plain `:param` (so values can be read from the path by position); else undefined. */
  segments: string[] | undefined;
  /** The parameter that names the resource itself: the last one after its last literal segment (`/games/:id` → `id`). */
  ownParam: string | undefined;
}

// `:id`, Express 4's `:id(\\d+)` and `:id?`, and Express 5's `*splat`.
const PARAM = /^(?::([A-Za-z0-9_$]+)(\(.*\))?(\?)?|\*([A-Za-z0-9_$]*))$/;

/** Reads a route template as written in Express 4 or 5 (`/api/games/:id`, `/files/*splat`, `/games{/:id}`). */
export function templateInfo(template: string): TemplateInfo {
  // The template of a route under a mount the router kept no trace of starts with '*'.
  let simple = !template.startsWith('*') && !/[{}]/.test(template);
  const path = (template.startsWith('*') ? template.slice(1) : template).replace(/[{}]/g, '');
  const raw = path.split('/').filter((s) => s !== '');
  let resource: string | undefined;
  let ownParam: string | undefined;
  for (const segment of raw) {
    const param = PARAM.exec(segment);
    if (param !== null) {
      // Optional and wildcard parameters move the segments after them.
      if (param[3] !== undefined || param[4] !== undefined) simple = false;
      ownParam = param[1] ?? param[4] ?? ownParam;
      continue;
    }
    if (/[:*()?+|\\^$[\]]/.test(segment)) {
      // A pattern: not a resource name, and the positions after it are not fixed.
      simple = false;
      continue;
    }
    resource = segment;
    ownParam = undefined;
  }
  return { resource: resource === undefined ? undefined : resourceName(resource), segments: simple ? raw : undefined, ownParam };
}

// Segments of a raw path that are ids rather than names: numbers, UUIDs, long hex (ObjectIds,
// hashes), and mixed letters-and-digits tokens of 8+ characters; 'v1'-style versions are names.
const ID_LIKE = /^(?:\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,})$/i;

function isIdLike(segment: string): boolean {
  if (ID_LIKE.test(segment)) return true;
  return segment.length >= 8 && /\d/.test(segment) && /^[A-Za-z0-9_-]+$/.test(segment) && !/^v\d+$/i.test(segment);
}

/** The resource of a request no route matched, from its raw path: the last segment that does not look like an id. */
export function resourceFromPath(pathname: string): string | undefined {
  const segments = pathname.split('/');
  for (let i = segments.length - 1; i >= 0; i--) {
    const segment = segments[i];
    if (segment === '' || isIdLike(segment)) continue;
    let decoded = segment;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      // Malformed escapes: the raw text still names something.
    }
    return resourceName(decoded.slice(0, 64));
  }
  return undefined;
}

/** `RESOURCE_VERB`: `GAME` + `POST` → `GAME_CREATED`. */
export function eventName(resource: string | undefined, method: string): string {
  return `${resource ?? 'RESOURCE'}_${verbOf(method)}`;
}
