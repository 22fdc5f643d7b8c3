import { ConfigError } from '../errors';
import { nearest } from '../options';
import { describe } from '../units';

/**
 * One feature flag. `enabled: false` turns it off for everyone; otherwise a user listed in
 * `users` gets it, and anyone else gets it when every other condition given holds.
 */
export interface FlagDefinition {
  /** Master switch: false turns the flag off for everyone, `users` included. Defaults to true. */
  enabled?: boolean;
  /** User ids (`req.user.id`) that get the flag whatever the other conditions say. Defaults to none. */
  users?: Array<string | number>;
  /** Plans (`req.user.plan`, else `req.auth.tier`) the flag is limited to. Defaults to any plan. */
  plans?: string[];
  /** Tenant ids (`req.tenant.id`) the flag is limited to. Defaults to any tenant. */
  tenants?: string[];
  /** ISO 3166 alpha-2 country codes (from the CDN's country header) the flag is limited to. Defaults to any country. */
  countries?: string[];
  /** Path prefixes (`/api/v2` covers `/api/v2/x`) or globs (`/games/*` one segment, `/admin/**` any depth) the flag is limited to. Defaults to any path. */
  routes?: string[];
  /** Whole percentage (0–100) of users (sticky per user id, else per IP) who get the flag. Defaults to 100. */
  percentage?: number;
  /** true limits the flag to beta users (`req.user.beta`); false adds no condition. Defaults to false. */
  beta?: boolean;
  /** Send `X-Feature-<name>: enabled` on responses of requests that get the flag. Defaults to false. */
  expose?: boolean;
  /** Free text for people reading the flag file; never evaluated. Defaults to none. */
  description?: string;
}

/** A flag as written in config: a definition, or a bare boolean for `{ enabled }`. */
export type FlagInput = FlagDefinition | boolean;

/** A flag compiled for evaluation: every list a Set, every route a matcher, decided once. */
export interface CompiledFlag {
  readonly name: string;
  /** `name + ':'`, the key prefix of the rollout hash. */
  readonly hashPrefix: string;
  /** `X-Feature-<name>`, the response header of an exposed flag. */
  readonly header: string;
  readonly enabled: boolean;
  readonly users?: ReadonlySet<string>;
  readonly plans?: ReadonlySet<string>;
  readonly tenants?: ReadonlySet<string>;
  readonly countries?: ReadonlySet<string>;
  readonly routes?: (path: string) => boolean;
  readonly percentage?: number;
  readonly beta: boolean;
  readonly expose: boolean;
  /** Whether any condition other than `users` is given. */
  readonly targeted: boolean;
  /** The definition as validated (normalised: booleans expanded), for `definitions()`. */
  readonly definition: Readonly<FlagDefinition>;
}

/** Every flag of one snapshot, looked up by name; replaced whole on reload, never mutated. */
export interface FlagSet {
  readonly byName: ReadonlyMap<string, CompiledFlag>;
  readonly list: readonly CompiledFlag[];
  /** The flags with `expose: true`, evaluated up front to set their response headers. */
  readonly exposed: readonly CompiledFlag[];
}

const KEYS = ['enabled', 'users', 'plans', 'tenants', 'countries', 'routes', 'percentage', 'beta', 'expose', 'description'] as const;

// Flag names become header names (`X-Feature-<name>`), so they keep to characters valid there; the
// leading letter or digit also rules out `__proto__`.
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const COUNTRY = /^[A-Za-z]{2}$/;
const MAX_LIST = 100_000;

/** Whether `name` is a valid flag name (letters, digits, `.`, `_`, `-`; 1–100 characters, starting with a letter or digit). */
export function isFlagName(name: unknown): name is string {
  return typeof name === 'string' && NAME.test(name);
}

/** Throws ConfigError at `option` unless `name` is a valid flag name. */
export function checkFlagName(name: unknown, option: string): string {
  if (!isFlagName(name)) {
    throw new ConfigError(option, `expected a flag name of letters, digits, '.', '_' or '-' (1–100 characters, starting with a letter or digit; it becomes the header X-Feature-<name>), got ${describe(name)}`);
  }
  return name;
}

/**
 * Validates one flag and compiles it. Throws ConfigError naming `option.<key>` for an unknown
 * key, a wrong type, or a percentage outside 0–100.
 */
export function compileFlag(name: string, input: unknown, option: string): CompiledFlag {
  checkFlagName(name, option);
  if (typeof input === 'boolean') input = { enabled: input };
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(option, `expected a flag definition like { enabled: true, percentage: 30 } or a boolean, got ${describe(input)}`);
  }
  const raw = input as Record<string, unknown>;
  for (const key of Object.keys(raw)) {
    if (!(KEYS as readonly string[]).includes(key)) {
      const near = nearest(key, KEYS);
      throw new ConfigError(`${option}.${key}`, `unknown flag condition${near ? `; did you mean '${near}'?` : ''} Known keys: ${KEYS.join(', ')}`);
    }
  }
  const definition: FlagDefinition = {};
  const enabled = bool(raw.enabled, true, `${option}.enabled`);
  if (raw.enabled !== undefined) definition.enabled = enabled;
  const beta = bool(raw.beta, false, `${option}.beta`);
  if (raw.beta !== undefined) definition.beta = beta;
  const expose = bool(raw.expose, false, `${option}.expose`);
  if (raw.expose !== undefined) definition.expose = expose;
  if (raw.description !== undefined) {
    if (typeof raw.description !== 'string') throw new ConfigError(`${option}.description`, `expected a string, got ${describe(raw.description)}`);
    definition.description = raw.description;
  }

  let users: Set<string> | undefined;
  if (raw.users !== undefined) {
    const list = stringList(raw.users, `${option}.users`, 'user ids like [\'u1\', 42]', true);
    definition.users = list;
    users = new Set(list);
  }
  let plans: Set<string> | undefined;
  if (raw.plans !== undefined) {
    const list = stringList(raw.plans, `${option}.plans`, 'plan names like [\'pro\', \'enterprise\']');
    definition.plans = list;
    plans = new Set(list);
  }
  let tenants: Set<string> | undefined;
  if (raw.tenants !== undefined) {
    const list = stringList(raw.tenants, `${option}.tenants`, 'tenant ids like [\'acme\']');
    definition.tenants = list;
    // tenant() lower-cases ids by default: 'Acme' in a flag file still means the tenant acme.
    tenants = new Set([...list, ...list.map((t) => t.toLowerCase())]);
  }
  let countries: Set<string> | undefined;
  if (raw.countries !== undefined) {
    const list = stringList(raw.countries, `${option}.countries`, 'two-letter country codes like [\'US\', \'DE\']');
    for (const c of list) {
      if (!COUNTRY.test(c)) throw new ConfigError(`${option}.countries`, `expected two-letter ISO 3166 country codes like 'US', got '${c}'`);
    }
    definition.countries = list.map((c) => c.toUpperCase());
    countries = new Set(definition.countries);
  }
  let routes: ((path: string) => boolean) | undefined;
  if (raw.routes !== undefined) {
    const list = stringList(raw.routes, `${option}.routes`, 'path prefixes or globs like [\'/api/v2\', \'/games/*\']');
    for (const r of list) {
      if (r[0] !== '/') throw new ConfigError(`${option}.routes`, `expected paths starting with '/', like '/api/v2' or '/games/*', got '${r}'`);
    }
    definition.routes = list;
    routes = compileRoutes(list);
  }
  let percentage: number | undefined;
  if (raw.percentage !== undefined) {
    const p = raw.percentage;
    if (typeof p !== 'number' || !Number.isInteger(p) || p < 0 || p > 100) {
      throw new ConfigError(`${option}.percentage`, `expected a whole number from 0 to 100 (the share of users who get the flag), got ${describe(p)}`);
    }
    definition.percentage = p;
    percentage = p;
  }

  return {
    name,
    hashPrefix: `${name}:`,
    header: `X-Feature-${name}`,
    enabled,
    users,
    plans,
    tenants,
    countries,
    routes,
    percentage,
    beta,
    expose,
    targeted: plans !== undefined || tenants !== undefined || countries !== undefined || routes !== undefined || percentage !== undefined || beta,
    definition: Object.freeze(definition),
  };
}

/**
 * Validates and compiles a whole set of flags (`{ name: definition }`). Throws ConfigError naming
 * `option.<name>.<key>` at the first invalid flag: a set is taken whole or not at all.
 */
export function compileFlags(input: unknown, option: string): FlagSet {
  if (input === undefined || input === null) return EMPTY_FLAGS;
  if (typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError(option, `expected an object of flags like { 'new-ui': { enabled: true, percentage: 30 } }, got ${describe(input)}`);
  }
  const byName = new Map<string, CompiledFlag>();
  for (const [name, def] of Object.entries(input as Record<string, unknown>)) {
    byName.set(name, compileFlag(name, def, `${option}.${name}`));
  }
  return flagSet(byName);
}

/** A {@link FlagSet} of already compiled flags. */
export function flagSet(byName: Map<string, CompiledFlag>): FlagSet {
  const list = [...byName.values()];
  return { byName, list, exposed: list.filter((f) => f.expose) };
}

/** The set with no flags. */
export const EMPTY_FLAGS: FlagSet = flagSet(new Map());

/** The flags of `set` as plain definitions, by name. */
export function definitionsOf(set: FlagSet): Record<string, FlagDefinition> {
  const out: Record<string, FlagDefinition> = {};
  for (const flag of set.list) out[flag.name] = { ...flag.definition };
  return out;
}

function bool(value: unknown, fallback: boolean, option: string): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw new ConfigError(option, `expected true or false, got ${describe(value)}`);
  return value;
}

function stringList(value: unknown, option: string, what: string, numbersToo = false): string[] {
  if (!Array.isArray(value)) throw new ConfigError(option, `expected an array of ${what}, got ${describe(value)}`);
  if (value.length > MAX_LIST) throw new ConfigError(option, `expected at most ${MAX_LIST} entries, got ${value.length}; use a percentage or a plan instead`);
  return value.map((v) => {
    if (typeof v === 'string' && v !== '') return v;
    if (numbersToo && typeof v === 'number' && Number.isFinite(v)) return String(v);
    throw new ConfigError(option, `expected an array of ${what}, got an entry ${describe(v)}`);
  });
}

/**
 * One matcher for a flag's routes: plain prefixes match at a segment boundary (`/api/v2` covers
 * `/api/v2` and `/api/v2/x`, not `/api/v20`); globs are anchored (`*` one segment, `**` any depth).
 */
function compileRoutes(routes: string[]): (path: string) => boolean {
  const prefixes: string[] = [];
  const globs: string[] = [];
  for (const route of routes) {
    if (route.includes('*')) globs.push(globSource(route));
    else prefixes.push(route.length > 1 && route.endsWith('/') ? route.slice(0, -1) : route);
  }
  const glob = globs.length > 0 ? new RegExp(`^(?:${globs.join('|')})$`) : undefined;
  const all = prefixes.includes('/');
  return function matchRoute(path: string): boolean {
    if (all) return true;
    for (const p of prefixes) {
      if (path.startsWith(p) && (path.length === p.length || path.charCodeAt(p.length) === 47)) return true;
    }
    return glob !== undefined && glob.test(path);
  };
}

function globSource(glob: string): string {
  let out = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === '*') {
      if (glob[i + 1] === '*') {
        // '/admin/**' also matches '/admin' itself.
        if (out.endsWith('/') && i + 2 === glob.length) out = `${out.slice(0, -1)}(?:/.*)?`;
        else out += '.*';
        i++;
      } else out += '[^/]*';
    } else out += c.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
  }
  return out;
}
