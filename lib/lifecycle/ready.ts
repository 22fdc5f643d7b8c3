import type { StoreReadiness } from '../stores/types';
import { describe, parseDuration } from '../units';
import { ConfigError } from '../errors';

/** Options of `stack.ready()`. */
export interface ReadyOptions {
  /** Longest wait for the stores to connect before `ready()` rejects; 0 waits for ever. Defaults to '30s'. */
  timeout?: number | string;
}

/** Thrown (as a rejection) by `stack.ready()` when a store did not connect within its timeout. */
export class StoresNotReadyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StoresNotReadyError';
  }
}

/** Resolves once every store is connected; rejects with what is still missing after `timeout`. */
export function waitForStores(stores: readonly StoreReadiness[], options: ReadyOptions = {}): Promise<void> {
  if (options === null || typeof options !== 'object') throw new ConfigError('ready', `expected options like { timeout: '30s' }, got ${describe(options)}`);
  const timeoutMs = parseDuration(options.timeout ?? '30s', 'ready.timeout');
  const all = Promise.all(stores.map((store) => store.whenConnected())).then(() => undefined);
  if (timeoutMs === 0 || stores.every((store) => store.connected)) return all;
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      const missing = stores.filter((store) => !store.connected).map((store) => store.describe());
      reject(new StoresNotReadyError(`stack.ready(): not connected after ${timeoutMs} ms: ${missing.join('; ')}. Check the address and that the server is reachable from here.`));
    }, timeoutMs);
    all.then(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}
