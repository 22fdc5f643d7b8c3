import type { Cluster, Redis } from 'ioredis';
import { NotReadyError } from '../lifecycle/readiness';
import type { StoreReadiness } from './types';

/**
 * Readiness of the stack's Redis connection, read from the client's own state: ioredis reports
 * `status === 'ready'` for a single server once its INFO ready check passed, for Sentinel once the
 * master is found and connected, and for a Cluster only once its slot map is known. Only while
 * ready does a check send a PING, which catches a server that stopped answering on an open
 * connection; the readiness cache above keeps that to one PING per interval.
 */
export function redisReadiness(client: Redis | Cluster): StoreReadiness {
  let connected = client.status === 'ready';
  let lastError: string | undefined;
  const waiting: Array<() => void> = [];
  const onReady = (): void => {
    connected = true;
    for (const resolve of waiting.splice(0)) resolve();
  };
  client.on('ready', onReady);
  // The error's code only ('ECONNREFUSED'): its message can carry the server's address.
  client.on('error', (err: Error & { code?: string }) => {
    lastError = err.code ?? err.name;
  });
  return {
    name: 'redis',
    get connected() {
      return connected;
    },
    whenConnected() {
      if (connected) return Promise.resolve();
      // A client the user made with lazyConnect waits for its first command; readiness is one.
      if (client.status === 'wait') client.connect().catch(() => undefined);
      return new Promise<void>((resolve) => waiting.push(resolve));
    },
    describe() {
      return `Redis is not connected (status '${client.status}'${lastError ? `, last error ${lastError}` : ''})`;
    },
    check(timeoutMs) {
      if (client.status !== 'ready') {
        return Promise.reject(new NotReadyError(connected ? `not connected (${client.status})` : `not connected yet (${client.status})`));
      }
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new NotReadyError(`no answer to PING within ${timeoutMs} ms`)), timeoutMs);
        timer.unref();
        client.ping().then(
          () => {
            clearTimeout(timer);
            resolve();
          },
          () => {
            clearTimeout(timer);
            reject(new NotReadyError('PING failed'));
          },
        );
      });
    },
  };
}
