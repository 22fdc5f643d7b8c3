import { KeyObject } from 'node:crypto';
import { importJWK, type JWK } from 'jose';
import type { Logger } from '../logger';
import { jwkAlgorithms, keyMisfit } from './algorithms';
import { KeySourceUnavailable, type KeyResolver } from './key-hook';
import { OutageLog } from './outage-log';

/** Where a key set comes from and how often it may be fetched (all durations in ms). */
export interface RemoteKeySetOptions {
  /** The JWKS URL; with `discoverFrom` instead, read from the issuer's discovery document. */
  jwksUri?: URL;
  /** The issuer whose `<issuer>/.well-known/openid-configuration` names the JWKS URL. */
  discoverFrom?: string;
  /** Least time between two fetches a request may cause (an unknown kid, a stale set). */
  cooldownMs: number;
  /** Longest a fetch (connect, answer and body) may take. */
  timeoutMs: number;
  /** Age after which a key set is fetched again in the background, while still in use. */
  maxAgeMs: number;
  /** The configured `algorithms`, or undefined to take each key's own. */
  algorithms: readonly string[] | undefined;
  /** Whether a URL must be https (production, except on loopback hosts). */
  httpsRequired: (url: URL) => boolean;
  clock: () => number;
  logger: Logger;
}

interface SetKey {
  kid: string | undefined;
  /** What this key may verify: its own alg, or those inferred from its type (see jwkAlgorithms). */
  algorithms: readonly string[];
  key: KeyObject;
}

// A key set is a few kilobytes; anything far larger is not one (a wrong URL), and is not read whole.
const MAX_BODY_BYTES = 512 * 1024;
// With no keys at all every token is refused, so a failed first fetch is retried sooner than the
// cooldown: one request a second per instance is no load for an identity provider.
const NO_KEYS_RETRY_MS = 1000;

/**
 * The keys of a JWKS endpoint, fetched on first use and kept. A token naming a `kid` the set lacks
 * (the provider rotated its keys) causes at most one fetch per cooldown, shared by every request
 * waiting for it, so forged kids cannot become traffic to the provider. When the endpoint fails,
 * the keys already held keep verifying; with none held, tokens are refused with 503. Each outage
 * is logged once, and its end once.
 */
export class RemoteKeySet {
  private keys: SetKey[] | undefined;
  private jwksUri: URL | undefined;
  private loadedAt = -Infinity;
  private attemptedAt = -Infinity;
  private loading: Promise<void> | undefined;
  private readonly outage: OutageLog;

  constructor(private readonly options: RemoteKeySetOptions) {
    this.jwksUri = options.jwksUri;
    this.outage = new OutageLog(options.logger, { down: 'ERR_JWKS_UNAVAILABLE', up: 'ERR_JWKS_RECOVERED' });
  }

  /** The resolver the verifier calls per token (a header whose alg is already accepted). */
  readonly resolve: KeyResolver = async (header) => {
    const alg = header.alg;
    const kid = typeof header.kid === 'string' ? header.kid : undefined;
    const now = this.options.clock();
    if (this.keys === undefined) {
      if (this.loading === undefined && elapsed(this.attemptedAt, now) < Math.min(NO_KEYS_RETRY_MS, this.options.cooldownMs)) {
        throw new KeySourceUnavailable();
      }
      await this.load(now);
      if (this.keys === undefined) throw new KeySourceUnavailable();
      return this.find(alg, kid);
    }
    const found = this.find(alg, kid);
    if (found !== undefined) {
      // A stale set is refreshed behind the request that noticed, so keys the provider withdrew
      // stop verifying without any request waiting on the fetch.
      if (elapsed(this.loadedAt, now) >= this.options.maxAgeMs && this.mayFetch(now)) void this.load(now);
      return found;
    }
    // Not in the set: maybe rotated in since the last fetch. Join a fetch in flight, or start one
    // if the cooldown allows; otherwise the key is unknown.
    if (this.loading === undefined && !this.mayFetch(now)) return undefined;
    await this.load(now);
    return this.find(alg, kid);
  };

  private mayFetch(now: number): boolean {
    return this.loading === undefined && elapsed(this.attemptedAt, now) >= this.options.cooldownMs;
  }

  // One fetch at a time; it never rejects (a failure is logged and leaves the keys as they were).
  private load(now: number): Promise<void> {
    if (this.loading === undefined) {
      this.attemptedAt = now;
      this.loading = this.fetchKeys().finally(() => {
        this.loading = undefined;
      });
    }
    return this.loading;
  }

  private async fetchKeys(): Promise<void> {
    try {
      this.jwksUri ??= await this.discover();
      const keys = await importKeySet(await fetchJson(this.jwksUri, this.options), this.options.algorithms);
      this.keys = keys;
      this.loadedAt = this.options.clock();
      this.outage.recovered('The JWKS endpoint answers again; tokens are verified with its current keys', this.where());
    } catch (err) {
      const held = this.keys?.length ?? 0;
      this.outage.failed(
        err,
        held > 0
          ? `The JWKS endpoint failed; tokens are verified with the ${held} keys already fetched until it answers again`
          : 'The JWKS endpoint failed and no keys are cached; tokens are refused with 503 until it answers',
        held > 0 ? 'warn' : 'error',
        { ...this.where(), cached_keys: held },
      );
    }
  }

  // Where the keys come from, for log lines: the JWKS URL once known, else the discovery document.
  private where(): Record<string, string> {
    if (this.jwksUri !== undefined) return { jwks_uri: this.jwksUri.href };
    return { discovery_uri: discoveryUrl(this.options.discoverFrom!).href };
  }

  private async discover(): Promise<URL> {
    const issuer = this.options.discoverFrom!;
    const doc = await fetchJson(discoveryUrl(issuer), this.options);
    if (!isObject(doc)) throw new Error('the discovery document is not a JSON object');
    // OpenID Connect Discovery 1.0 §4.3: the document must name exactly the issuer it was fetched for.
    if (doc.issuer !== issuer) {
      throw new Error(
        `the discovery document names issuer ${JSON.stringify(doc.issuer)}, not auth.jwt.issuer '${issuer}'; tokens carry the discovered value, so set auth.jwt.issuer to exactly that`,
      );
    }
    if (typeof doc.jwks_uri !== 'string') throw new Error('the discovery document has no jwks_uri');
    let url: URL;
    try {
      url = new URL(doc.jwks_uri);
    } catch {
      throw new Error(`the discovery document's jwks_uri ${JSON.stringify(doc.jwks_uri)} is not a URL`);
    }
    checkProtocol(url, this.options.httpsRequired, "the discovery document's jwks_uri");
    return url;
  }

  private find(alg: string, kid: string | undefined): KeyObject | undefined {
    const keys = this.keys!;
    if (kid !== undefined) return keys.find((k) => k.kid === kid && k.algorithms.includes(alg))?.key;
    // A token that names no kid is verified only when exactly one key fits its algorithm: trying
    // each key in turn would multiply the work a forged token costs.
    const fits = keys.filter((k) => k.algorithms.includes(alg));
    return fits.length === 1 ? fits[0].key : undefined;
  }
}

/** `<issuer>/.well-known/openid-configuration`, as OpenID Connect Discovery 1.0 §4 builds it. */
export function discoveryUrl(issuer: string): URL {
  return new URL(`${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`);
}

/** Throws unless `url` is http(s), and https where `httpsRequired` says so. */
export function checkProtocol(url: URL, httpsRequired: (url: URL) => boolean, what: string): void {
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`${what} must be an https URL, got ${url.protocol}`);
  if (url.protocol === 'http:' && httpsRequired(url)) {
    throw new Error(`${what} must be https in production (http is allowed for localhost only), got ${url.href}`);
  }
}

async function fetchJson(url: URL, options: Pick<RemoteKeySetOptions, 'timeoutMs' | 'httpsRequired'>): Promise<unknown> {
  let res: Response;
  try {
    res = await fetch(url, {
      headers: { accept: 'application/json', 'user-agent': 'express-perimeter' },
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (err) {
    // fetch says only "fetch failed"; the reason (ECONNREFUSED, ENOTFOUND, a timeout) is its cause.
    const e = err as Error & { cause?: { code?: string; message?: string } };
    const reason =
      e.name === 'TimeoutError' ? `no answer within ${options.timeoutMs} ms` : (e.cause?.code ?? e.cause?.message ?? e.message);
    throw new Error(`${url.href} could not be fetched: ${reason}`);
  }
  try {
    // A redirect must not lead from https to plain http.
    checkProtocol(new URL(res.url || url.href), options.httpsRequired, `${url.href} (redirected)`);
    if (res.status !== 200) throw new Error(`${url.href} answered ${res.status}, expected 200`);
    const length = Number(res.headers.get('content-length') ?? 0);
    if (length > MAX_BODY_BYTES) throw new Error(`${url.href} sent ${length} bytes; a key set or discovery document is far smaller`);
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const chunk of res.body ?? []) {
      size += chunk.byteLength;
      if (size > MAX_BODY_BYTES)
        throw new Error(`${url.href} sent more than ${MAX_BODY_BYTES} bytes; a key set or discovery document is far smaller`);
      chunks.push(chunk);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      throw new Error(`${url.href} did not answer JSON`);
    }
  } finally {
    // A body left unread keeps its connection busy.
    if (!res.bodyUsed) await res.body?.cancel().catch(() => undefined);
  }
}

/**
 * The usable signing keys of a JWKS. Left out: secrets (kty 'oct': a public set must never
 * hold one, and HS* is never accepted from a key set), private keys, keys for encryption
 * (`use` other than 'sig', `key_ops` without 'verify'), keys no accepted algorithm fits, and keys
 * that do not import (a malformed member must not take the others down with it).
 */
async function importKeySet(body: unknown, configured: readonly string[] | undefined): Promise<SetKey[]> {
  if (!isObject(body) || !Array.isArray(body.keys)) throw new Error('the answer is not a JSON Web Key Set (an object with a "keys" array)');
  const keys: SetKey[] = [];
  for (const jwk of body.keys as unknown[]) {
    if (!isObject(jwk) || jwk.kty === 'oct' || 'd' in jwk) continue;
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    if (Array.isArray(jwk.key_ops) && !jwk.key_ops.includes('verify')) continue;
    const algorithms = jwkAlgorithms(jwk, configured);
    if (algorithms.length === 0) continue;
    let key: unknown;
    try {
      key = await importJWK(jwk as unknown as JWK, algorithms[0]);
    } catch {
      continue;
    }
    if (!(key instanceof KeyObject) || key.type !== 'public') continue;
    const fit = algorithms.filter((alg) => keyMisfit(key, alg) === undefined);
    if (fit.length > 0) keys.push({ kid: typeof jwk.kid === 'string' ? jwk.kid : undefined, algorithms: fit, key });
  }
  if (keys.length === 0) {
    throw new Error(
      `the key set has no usable signing key among its ${body.keys.length} (read: RSA of 2048 bits or more, EC on P-256/P-384/P-521, OKP Ed25519; never 'oct' secrets${configured === undefined ? '' : `; only keys for ${configured.join(', ')}, as auth.jwt.algorithms says`})`,
    );
  }
  return keys;
}

// Time passed since `since`; a clock set back counts as time passed, so a jump never freezes the key set.
function elapsed(since: number, now: number): number {
  const d = now - since;
  return d < 0 ? Infinity : d;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
