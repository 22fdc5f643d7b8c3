import { createServer, type AddressInfo } from 'node:net';
import { ErrorCode, OpenFeature, ProviderEvents, ProviderStatus, type EvaluationContext, type EventDetails } from '@openfeature/server-sdk';
import request from 'supertest';
import { createStack, featureFlags } from '../index';
import { MemoryStores } from '../lib/stores';
import { flagsStore } from '../lib/stores/flags-store';
import { RedisStores } from '../lib/stores/redis';
import { contextFromRequest, PerimeterProvider } from '../openfeature';
import { eventually, newApp, recordingLogger } from './helpers/app';

const FLAGS = {
  everyone: {},
  killed: { enabled: false },
  pro: { plans: ['pro'] },
  rollout: { percentage: 50 },
  nobody: { percentage: 0 },
  all: { percentage: 100 },
  eu: { countries: ['DE', 'FR'], tenants: ['acme'] },
  de: { countries: ['DE'] },
  vip: { users: ['u-vip'] },
  beta: { beta: true, routes: ['/api/v2'] },
};

afterEach(async () => {
  await OpenFeature.clearProviders();
  OpenFeature.clearHandlers();
  jest.useRealTimers();
});

/** Resolves with the next event of `type` the OpenFeature API emits. */
function nextEvent(type: ProviderEvents): Promise<EventDetails | undefined> {
  return new Promise((resolve) => {
    const handler = (details?: EventDetails) => {
      OpenFeature.removeHandler(type, handler);
      resolve(details);
    };
    OpenFeature.addHandler(type, handler);
  });
}

/** Lets promise chains and real I/O run between fake-clock steps. */
const io = () => new Promise((r) => setImmediate(r));

describe('PerimeterProvider through the OpenFeature SDK', () => {
  it('answers getBooleanValue from the flags, with OpenFeature reasons', async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    expect(await client.getBooleanValue('everyone', false)).toBe(true);
    expect(await client.getBooleanDetails('everyone', false)).toMatchObject({ value: true, reason: 'STATIC', variant: 'on' });
    expect(await client.getBooleanDetails('pro', false, { targetingKey: 'u1', plan: 'pro' })).toMatchObject({ value: true, reason: 'TARGETING_MATCH' });
    expect(await client.getBooleanDetails('pro', true, { targetingKey: 'u1', plan: 'free' })).toMatchObject({ value: false, reason: 'DEFAULT' });
    expect(await client.getBooleanDetails('vip', false, { targetingKey: 'u-vip' })).toMatchObject({ value: true, reason: 'TARGETING_MATCH' });
    expect(await client.getBooleanValue('eu', false, { tenant: 'acme', country: 'de' })).toBe(true);
    expect(await client.getBooleanValue('eu', false, { tenant: 'acme', country: 'US' })).toBe(false);
    expect(await client.getBooleanValue('beta', false, { beta: true, route: '/api/v2/games' })).toBe(true);
    expect(await client.getBooleanValue('beta', false, { beta: true, route: '/api/v1/games' })).toBe(false);
  });

  it("gives the caller's default with reason DISABLED for a disabled flag, whatever the default (#11)", async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    const on = await client.getBooleanDetails('killed', true, { targetingKey: 'u1' });
    expect(on).toMatchObject({ flagKey: 'killed', value: true, reason: 'DISABLED' });
    expect(on.errorCode).toBeUndefined();
    expect(on.variant).toBeUndefined();
    expect(await client.getBooleanDetails('killed', false)).toMatchObject({ value: false, reason: 'DISABLED' });
  });

  it('splits the rollout by targetingKey (the user id, else the address) with reason SPLIT, sticky per key', async () => {
    const provider = new PerimeterProvider({ flags: FLAGS });
    await OpenFeature.setProviderAndWait(provider);
    const client = OpenFeature.getClient();
    let on = 0;
    for (let i = 0; i < 400; i++) {
      const details = await client.getBooleanDetails('rollout', false, { targetingKey: `user-${i}` });
      expect(details.reason).toBe('SPLIT');
      expect(await client.getBooleanValue('rollout', !details.value, { targetingKey: `user-${i}` })).toBe(details.value);
      if (details.value) on++;
    }
    expect(on).toBeGreaterThan(140);
    expect(on).toBeLessThan(260);
    // An anonymous request's context (contextFromRequest) keys the rollout by the address.
    const byIp = await client.getBooleanDetails('rollout', false, { targetingKey: '203.0.113.9', ip: '203.0.113.9' });
    expect(byIp.reason).toBe('SPLIT');
    expect(await client.getBooleanValue('rollout', !byIp.value, { targetingKey: '203.0.113.9', ip: '203.0.113.9' })).toBe(byIp.value);
  });

  it('answers TARGETING_KEY_MISSING with the default for a rollout evaluated without a targetingKey (#11)', async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    for (const fallback of [true, false]) {
      for (const context of [{}, { ip: '203.0.113.9' }, { targetingKey: '' }, { plan: 'pro' }] as EvaluationContext[]) {
        expect(await client.getBooleanDetails('rollout', fallback, context)).toMatchObject({
          value: fallback,
          reason: 'ERROR',
          errorCode: ErrorCode.TARGETING_KEY_MISSING,
        });
      }
    }
    // Nobody is split at 0 % or 100 %, and a flag without a rollout needs no key.
    expect(await client.getBooleanDetails('nobody', true)).toMatchObject({ value: false, reason: 'SPLIT' });
    expect(await client.getBooleanDetails('all', false)).toMatchObject({ value: true, reason: 'SPLIT' });
    expect(await client.getBooleanDetails('everyone', false)).toMatchObject({ value: true, reason: 'STATIC' });
  });

  it('fails initialisation when its source holds flags that do not load, answers PROVIDER_NOT_READY, and turns READY once they load (#11)', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'setImmediate', 'clearImmediate', 'queueMicrotask', 'hrtime', 'performance', 'Date'] });
    const stores = new MemoryStores();
    const store = stores.create(flagsStore());
    await store.set('broken', '{ not json');
    const errored = nextEvent(ProviderEvents.Error);
    const provider = new PerimeterProvider({ source: 'redis', stores, logger: recordingLogger().logger });
    await expect(OpenFeature.setProviderAndWait(provider)).rejects.toThrow(/feature flags could not be loaded from their source/);
    expect(await errored).toMatchObject({ providerName: 'express-perimeter', message: expect.stringMatching(/could not be loaded/) });
    const client = OpenFeature.getClient();
    expect(client.providerStatus).toBe(ProviderStatus.ERROR);
    expect(await client.getBooleanDetails('anything', true)).toMatchObject({ value: true, reason: 'ERROR', errorCode: ErrorCode.PROVIDER_NOT_READY });
    expect(await client.getStringDetails('anything', 'dflt')).toMatchObject({ value: 'dflt', errorCode: ErrorCode.PROVIDER_NOT_READY });

    // The source is put right: the provider's next attempt loads it and announces PROVIDER_READY.
    await store.delete('broken');
    await store.set('late', JSON.stringify({ plans: ['pro'] }));
    const ready = nextEvent(ProviderEvents.Ready);
    let announced = false;
    void ready.then(() => (announced = true));
    for (let i = 0; i < 10 && !announced; i++) {
      jest.advanceTimersByTime(1000 * 2 ** i);
      for (let j = 0; j < 20 && !announced; j++) await io();
    }
    expect(await ready).toMatchObject({ providerName: 'express-perimeter' });
    expect(client.providerStatus).toBe(ProviderStatus.READY);
    expect(await client.getBooleanDetails('late', false, { targetingKey: 'u1', plan: 'pro' })).toMatchObject({ value: true, reason: 'TARGETING_MATCH' });
  });

  it('fails initialisation when Redis does not answer (PROVIDER_ERROR), instead of READY with every flag missing (#11)', async () => {
    // A port nothing listens on.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
    const { port } = probe.address() as AddressInfo;
    await new Promise((r) => probe.close(r));
    const { logger, lines } = recordingLogger();
    const stores = new RedisStores(`redis://127.0.0.1:${port}`, { logger, commandTimeout: 200 });
    try {
      const errored = nextEvent(ProviderEvents.Error);
      await expect(OpenFeature.setProviderAndWait(new PerimeterProvider({ source: 'redis', stores, logger }))).rejects.toThrow(/could not be loaded/);
      await errored;
      const client = OpenFeature.getClient();
      expect(client.providerStatus).toBe(ProviderStatus.ERROR);
      expect(await client.getBooleanDetails('everyone', false)).toMatchObject({ value: false, reason: 'ERROR', errorCode: ErrorCode.PROVIDER_NOT_READY });
      expect(lines.some((l) => l.code === 'FEATURE_FLAGS_SOURCE_ERROR')).toBe(true);
    } finally {
      await OpenFeature.clearProviders();
      await stores.close();
    }
  });

  it('announces PROVIDER_READY once its flags are loaded', async () => {
    const ready = nextEvent(ProviderEvents.Ready);
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    expect(await ready).toMatchObject({ providerName: 'express-perimeter' });
    expect(OpenFeature.getClient().providerStatus).toBe(ProviderStatus.READY);
  });

  it('returns the default with FLAG_NOT_FOUND for an unknown flag, and TYPE_MISMATCH for non-boolean lookups', async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    expect(await client.getBooleanDetails('missing', true)).toMatchObject({ value: true, reason: 'ERROR', errorCode: ErrorCode.FLAG_NOT_FOUND });
    expect(await client.getStringDetails('everyone', 'dflt')).toMatchObject({ value: 'dflt', reason: 'ERROR', errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getNumberDetails('everyone', 7)).toMatchObject({ value: 7, errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getObjectDetails('everyone', { a: 1 })).toMatchObject({ value: { a: 1 }, errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getStringDetails('missing', 'dflt')).toMatchObject({ value: 'dflt', errorCode: ErrorCode.FLAG_NOT_FOUND });
  });

  it("agrees with req.features on a stack's flags, through contextFromRequest(req)", async () => {
    const stack = createStack({ logger: recordingLogger().logger, featureFlags: { flags: FLAGS } });
    await OpenFeature.setProviderAndWait(new PerimeterProvider(stack.middleware.featureFlags));
    const client = OpenFeature.getClient();
    const app = newApp();
    app.use((req, _res, next) => {
      const id = req.headers['x-user'];
      if (typeof id === 'string') req.user = { id, plan: 'pro', beta: true } as never;
      next();
    });
    app.use(stack);
    app.get('/api/v2/check', async (req, res) => {
      const ctx = contextFromRequest(req);
      const names = Object.keys(FLAGS);
      const viaSdk = await Promise.all(names.map((n) => client.getBooleanValue(n, false, ctx)));
      res.json({ ctx, sdk: Object.fromEntries(names.map((n, i) => [n, viaSdk[i]])), features: req.features?.all() });
    });
    app.use(stack.errorHandler);
    for (const user of ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']) {
      const res = await request(app).get('/api/v2/check').set('X-User', user).set('CF-IPCountry', 'DE').expect(200);
      expect(res.body.sdk).toEqual(res.body.features);
      expect(res.body.ctx).toMatchObject({ targetingKey: user, plan: 'pro', country: 'DE', beta: true, route: '/api/v2/check' });
    }
    // Anonymous: the rollout sticks to the address on both sides.
    const anonymous = await request(app).get('/api/v2/check').expect(200);
    expect(anonymous.body.ctx).toMatchObject({ targetingKey: anonymous.body.ctx.ip });
    expect(anonymous.body.sdk).toEqual(anonymous.body.features);
    await stack.close();
  });

  it('waits for the first load of a shared source, and emits PROVIDER_CONFIGURATION_CHANGED when flags change', async () => {
    const stores = new MemoryStores();
    const flags = featureFlags({ source: 'redis', stores });
    await flags.ready();
    await flags.set('late', { plans: ['pro'] });

    const provider = new PerimeterProvider({ source: 'redis', stores });
    await OpenFeature.setProviderAndWait(provider);
    const client = OpenFeature.getClient();
    expect(await client.getBooleanValue('late', false, { plan: 'pro' })).toBe(true);

    const seen: Array<EventDetails<ProviderEvents.ConfigurationChanged> | undefined> = [];
    client.addHandler(ProviderEvents.ConfigurationChanged, (details) => seen.push(details));
    await flags.set('late', { plans: ['enterprise'] });
    await eventually(() => expect(seen.some((d) => d?.flagsChanged?.includes('late'))).toBe(true));
    expect(await client.getBooleanValue('late', false, { plan: 'pro' })).toBe(false);
    await flags.close();
  });
});
