const instances = new WeakMap<object, Map<string, unknown>>();

/**
 * The one instance of something per stores object (or per Redis connection) and `key`: made by `create` on first use, the
 * same object afterwards. A stack's middleware and route-level ones behind it build their state on
 * the same stores, so they share it (one IP mirror, one breaker subscription, one set of counts)
 * exactly as they share Redis keys. Held weakly: closing and dropping the stores frees it.
 *
 * Keys name the feature and whatever else must keep instances apart (`'rateLimit:login'`).
 */
export function perStores<T>(stores: object, key: string, create: () => T): T {
  let byKey = instances.get(stores);
  if (byKey === undefined) {
    byKey = new Map();
    instances.set(stores, byKey);
  }
  if (byKey.has(key)) return byKey.get(key) as T;
  const made = create();
  byKey.set(key, made);
  return made;
}

/** Forgets the instance of `key` on `stores` (it was closed), so the next use makes a new one. */
export function forgetPerStores(stores: object, key: string, instance: unknown): void {
  const byKey = instances.get(stores);
  if (byKey !== undefined && byKey.get(key) === instance) byKey.delete(key);
}
