import { ConfigError } from './errors';
import type { StackConfig } from './create-stack';
import type { AuthOptions } from '../middleware/auth';

/**
 * Reads REDIS_URL, JWT_SECRET, JWT_PUBLIC_KEY, API_KEYS (JSON array), CORS_ORIGINS (JSON array or
 * comma list), LOG_LEVEL, LOG_FORMAT, NODE_ENV and TRUST_PROXY into a createStack config.
 * Malformed values throw ConfigError naming the variable.
 */
export function configFromEnv(env: Record<string, string | undefined> = process.env): StackConfig {
  const config: StackConfig = {};
  if (env.REDIS_URL) config.redis = env.REDIS_URL;
  const logger: { level?: string; format?: 'json' | 'gcp' } = {};
  if (env.LOG_LEVEL) logger.level = env.LOG_LEVEL;
  if (env.LOG_FORMAT) {
    if (env.LOG_FORMAT !== 'json' && env.LOG_FORMAT !== 'gcp') throw new ConfigError('LOG_FORMAT', `expected 'json' or 'gcp', got '${env.LOG_FORMAT}'`);
    logger.format = env.LOG_FORMAT;
  }
  if (Object.keys(logger).length > 0) config.logger = logger;
  if (env.NODE_ENV === 'production') config.errorNormalizer = { expose: false };

  const auth: AuthOptions = {};
  if (env.JWT_SECRET || env.JWT_PUBLIC_KEY) {
    auth.jwt = env.JWT_PUBLIC_KEY
      ? { publicKey: env.JWT_PUBLIC_KEY.replace(/\\n/g, '\n') }
      : { secret: env.JWT_SECRET };
  }
  if (env.API_KEYS) {
    let keys: unknown;
    try {
      keys = JSON.parse(env.API_KEYS);
    } catch {
      throw new ConfigError('API_KEYS', 'expected a JSON array like [{"key":"sk-…","name":"Production","tier":"pro"}]');
    }
    if (!Array.isArray(keys)) throw new ConfigError('API_KEYS', 'expected a JSON array of { key | hash, name, tier, userId?, expiresAt? }');
    // Each entry is checked by auth() at setup, naming the bad field.
    auth.apiKeys = keys as AuthOptions['apiKeys'];
  }
  if (Object.keys(auth).length > 0) config.auth = auth;

  if (env.CORS_ORIGINS) {
    const raw = env.CORS_ORIGINS.trim();
    let origins: string[];
    if (raw.startsWith('[')) {
      try {
        origins = JSON.parse(raw) as string[];
      } catch {
        throw new ConfigError('CORS_ORIGINS', 'expected a JSON array or a comma-separated list of origins');
      }
    } else {
      origins = raw.split(',').map((o) => o.trim()).filter(Boolean);
    }
    config.cors = { origin: origins, credentials: true };
  }
  if (env.TRUST_PROXY !== undefined && env.TRUST_PROXY !== '') {
    const t = env.TRUST_PROXY.trim();
    config.trustProxy = t === 'true' ? true : t === 'false' ? false : /^\d+$/.test(t) ? Number(t) : t.includes(',') ? t.split(',').map((s) => s.trim()) : t;
  }
  return config;
}
